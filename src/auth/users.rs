//! The users pgrelay accepts, with their secrets parsed once per config load.
//!
//! A client's login is checked against `Users`; the same entry says which role and password
//! pgrelay uses on the server side. Unknown users get the same exchange and the same error as
//! a wrong password, so the user list cannot be probed from outside.

use std::collections::HashMap;
use std::sync::Arc;

use super::{AuthError, ScramVerifier, Secret};
use crate::config::{AuthMethod, Config, UserConfig};

/// One accepted user.
#[derive(Debug)]
pub struct UserEntry {
    pub config: UserConfig,
    pub secret: Option<Secret>,
    /// The role pgrelay logs in as on the servers.
    pub server_user: String,
    /// The password pgrelay sends the servers, when it has one.
    pub server_password: Option<String>,
}

impl UserEntry {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn auth(&self) -> AuthMethod {
        self.config.auth
    }
}

#[derive(Debug)]
pub struct Users {
    by_name: HashMap<String, Arc<UserEntry>>,
    /// Used for the exchange with a user that does not exist, so it looks like any other.
    pub decoy: ScramVerifier,
}

impl Users {
    pub fn from_config(config: &Config) -> Result<Users, (String, AuthError)> {
        let mut by_name = HashMap::new();
        for user in &config.users {
            let secret = match &user.password {
                Some(p) => Some(Secret::parse(p).map_err(|e| (user.name.clone(), e))?),
                None => None,
            };
            let server_password = user.server_password.clone().or_else(|| match &secret {
                Some(Secret::Plain { password, .. }) => Some(password.clone()),
                _ => None,
            });
            let entry = UserEntry {
                server_user: user
                    .server_user
                    .clone()
                    .unwrap_or_else(|| user.name.clone()),
                server_password,
                secret,
                config: user.clone(),
            };
            by_name.insert(user.name.clone(), Arc::new(entry));
        }
        Ok(Users {
            by_name,
            decoy: ScramVerifier::from_password(&format!("{:032x}", rand::random::<u128>())),
        })
    }

    /// The password pgrelay logs in to the servers with as `server_user`: `None` when no
    /// configured user logs in as that role, `Some(None)` when the one that does has none.
    pub fn server_password_of(&self, server_user: &str) -> Option<Option<String>> {
        self.by_name
            .values()
            .find(|u| u.server_user == server_user)
            .map(|u| u.server_password.clone())
    }

    pub fn get(&self, name: &str) -> Option<Arc<UserEntry>> {
        self.by_name.get(name).cloned()
    }
}
