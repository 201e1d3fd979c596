//! Polling with a deadline instead of sleeping and hoping.

use std::fmt::{Debug, Display};
use std::future::Future;
use std::time::Duration;

use anyhow::{Result, bail};
use kube::api::Api;
use kube::core::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

/// How often the pollers below check.
pub const POLL_INTERVAL: Duration = Duration::from_millis(75);

/// Polls `check` until it returns `Ok(Some(value))`; `Ok(None)` and errors mean "not yet". Fails after
/// `timeout`, naming `what` and the last error or the fact that the condition stayed false.
pub async fn wait_for<T, F, Fut>(what: impl Display, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last_error = None;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(Ok(Some(value))) => return Ok(value),
            Ok(Ok(None)) => last_error = None,
            Ok(Err(e)) => last_error = Some(e),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => bail!(
                    "timed out after {:?} waiting for {what}; last error: {e:#}",
                    started.elapsed()
                ),
                None => bail!("timed out after {:?} waiting for {what}", started.elapsed()),
            }
        }
        tokio::time::sleep_until((Instant::now() + POLL_INTERVAL).min(deadline)).await;
    }
}

/// Polls `condition` until it is true; fails after `timeout`, naming `what`.
pub async fn wait_until<F, Fut>(what: impl Display, timeout: Duration, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = condition();
        async move { Ok(fut.await.then_some(())) }
    })
    .await
}

/// Polls `api.get(name)` until the object exists and `predicate` holds; returns it. On timeout the
/// error shows the last version seen (or that it was missing).
pub async fn wait_for_object<K, P>(api: &Api<K>, name: &str, timeout: Duration, predicate: P) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    P: Fn(&K) -> bool,
{
    let kind = std::any::type_name::<K>().rsplit("::").next().unwrap_or("object");
    wait_for(format!("{kind} {name:?}"), timeout, || async {
        match api.get_opt(name).await? {
            Some(object) if predicate(&object) => Ok(Some(object)),
            Some(object) => {
                let shown = serde_json::to_string(&object).unwrap_or_default();
                bail!("condition not met yet; last seen: {}", truncate(&shown, 1500))
            }
            None => bail!("not found yet"),
        }
    })
    .await
}

/// Polls until `api.get(name)` answers 404.
pub async fn wait_for_deletion<K>(api: &Api<K>, name: &str, timeout: Duration) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let kind = std::any::type_name::<K>().rsplit("::").next().unwrap_or("object");
    wait_for(format!("{kind} {name:?} to be deleted"), timeout, || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn wait_for_returns_the_first_some() {
        let calls = AtomicU32::new(0);
        let got = wait_for("third call", Duration::from_secs(5), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n == 1 {
                bail!("transient");
            }
            Ok((n >= 3).then_some(n))
        })
        .await
        .unwrap();
        assert_eq!(got, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_names_what_and_last_error() {
        let err = wait_for::<(), _, _>("the moon", Duration::from_secs(1), || async { bail!("still night") })
            .await
            .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("waiting for the moon"), "{message}");
        assert!(message.contains("still night"), "{message}");

        let err = wait_until("never", Duration::from_millis(300), || async { false })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("waiting for never"), "{err}");
    }

    #[test]
    fn truncate_is_char_safe() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 5), "hi");
    }
}
