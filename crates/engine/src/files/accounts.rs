//! Small files read whole, and the sandbox's own account names (`/etc/passwd`,
//! `/etc/group`), for surfaces that show owners by name.

use std::collections::BTreeMap;

use futures::StreamExt;
use warren_api::ErrorCode;

use crate::{Engine, EngineError};

/// Largest passwd or group file read for names.
const ACCOUNTS_CAP: u64 = 4 * 1024 * 1024;

/// User and group names by id, as the sandbox's `/etc/passwd` and `/etc/group` give them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountNames {
    pub users: BTreeMap<u32, String>,
    pub groups: BTreeMap<u32, String>,
}

impl AccountNames {
    /// The name of user `uid`, or the number.
    pub fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    /// The name of group `gid`, or the number.
    pub fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

/// `name:x:id:...` lines of a passwd or group file.
pub fn parse_ids(text: &[u8]) -> BTreeMap<u32, String> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            Some((id, name.to_string()))
        })
        .collect()
}

impl Engine {
    /// The whole of a file of at most `cap` bytes; `None` when it does not exist. A larger
    /// file is `payload_too_large`.
    pub async fn read_small(
        &self,
        id: &str,
        path: &str,
        cap: u64,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        let (info, mut body) = match self.read_file(id, path).await {
            Ok(r) => r,
            Err(e) if e.code() == ErrorCode::FileNotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let too_large = |what: String| EngineError::PayloadTooLarge(what);
        if info.size > cap {
            return Err(too_large(format!(
                "{path} is {} bytes; at most {cap} are handled",
                info.size
            )));
        }
        let mut out = Vec::with_capacity(usize::try_from(info.size).unwrap_or(0));
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.attach_error(e))?;
            out.extend_from_slice(&chunk);
            if out.len() as u64 > cap {
                return Err(too_large(format!(
                    "{path} grew past {cap} bytes while it was read"
                )));
            }
        }
        Ok(Some(out))
    }

    /// The sandbox's user and group names (empty maps where a file is missing).
    pub async fn account_names(&self, id: &str) -> Result<AccountNames, EngineError> {
        Ok(AccountNames {
            users: self
                .read_small(id, "/etc/passwd", ACCOUNTS_CAP)
                .await?
                .map(|b| parse_ids(&b))
                .unwrap_or_default(),
            groups: self
                .read_small(id, "/etc/group", ACCOUNTS_CAP)
                .await?
                .map(|b| parse_ids(&b))
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_passwd() {
        let m = parse_ids(
            b"root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\nbad\n",
        );
        assert_eq!(m.get(&0).map(String::as_str), Some("root"));
        assert_eq!(m.get(&1000).map(String::as_str), Some("user"));
        let names = AccountNames {
            users: m,
            groups: BTreeMap::new(),
        };
        assert_eq!(names.user(1000), "user");
        assert_eq!(names.user(7), "7");
        assert_eq!(names.group(0), "0");
    }
}
