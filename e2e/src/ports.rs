//! Free loopback ports.
//!
//! A port is found by binding `127.0.0.1:0` and releasing it, so another process may take it before our
//! child binds it: callers retry the process start on "address already in use" (see
//! [`crate::process::is_port_clash`]). Within one process a port is never handed out twice.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};

/// A currently free TCP port on 127.0.0.1, never returned before by this process.
pub fn free_port() -> Result<u16> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    for _ in 0..64 {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0 to find a free port")?;
        let port = listener.local_addr().context("reading a bound port")?.port();
        let mut seen = handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert(port) {
            return Ok(port);
        }
    }
    bail!("no fresh free port on 127.0.0.1 after 64 tries")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_bindable() {
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b);
        TcpListener::bind((Ipv4Addr::LOCALHOST, a)).unwrap();
    }
}
