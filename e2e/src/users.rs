//! Users of the API servers' static token file (`--token-auth-file`).

use anyhow::{Result, bail};

/// The admin user every cluster gets; in `system:masters`, so it is allowed everything under RBAC too.
pub const ADMIN_USER: &str = "admin";

/// A user known to the API servers by a bearer token, e.g. for RBAC tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    name: String,
    token: String,
    groups: Vec<String>,
}

impl User {
    /// A user with a name, a bearer token and groups; the name doubles as its uid.
    pub fn new(name: impl Into<String>, token: impl Into<String>, groups: &[&str]) -> Self {
        Self {
            name: name.into(),
            token: token.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    /// The user name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The groups.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    /// Rejects values that the CSV token file cannot hold.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |s: &str| s.is_empty() || s.contains([',', '"', '\n', '\r']);
        if bad(&self.name) || bad(&self.token) || self.groups.iter().any(|g| bad(g)) {
            bail!(
                "user {:?}: name, token and groups must be non-empty and hold no comma, quote or newline",
                self.name
            );
        }
        Ok(())
    }
}

/// The `--token-auth-file` contents: `token,user,uid,"group1,group2"` per line.
pub(crate) fn render_token_auth_file(users: &[User]) -> Result<String> {
    let mut out = String::new();
    for user in users {
        user.validate()?;
        out.push_str(&format!("{},{},{}", user.token, user.name, user.name));
        if !user.groups.is_empty() {
            out.push_str(&format!(",\"{}\"", user.groups.join(",")));
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_lines() {
        let users = [
            User::new("admin", "t0", &["system:masters"]),
            User::new("alice", "t1", &["dev", "ops"]),
            User::new("bob", "t2", &[]),
        ];
        assert_eq!(
            render_token_auth_file(&users).unwrap(),
            "t0,admin,admin,\"system:masters\"\nt1,alice,alice,\"dev,ops\"\nt2,bob,bob\n"
        );
    }

    #[test]
    fn rejects_csv_breaking_values() {
        for user in [
            User::new("a,b", "t", &[]),
            User::new("a", "", &[]),
            User::new("a", "t", &["g\""]),
        ] {
            assert!(render_token_auth_file(&[user]).is_err());
        }
    }
}
