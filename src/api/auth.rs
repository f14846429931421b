//! API keys with scopes. Keys come from `--api-key` (comma-separated; each an admin key) and
//! from a key file (`--keys-file`, JSON, keys stored as sha256 hashes, each with a scope and
//! optionally the tasks it may touch), re-read on SIGHUP and whenever the file changes.
//!
//! Scopes nest: `read` (every GET, embeddings and predictions), `write` (ingest, weak and gold
//! labels, jobs) and `admin` (creating, changing and deleting tasks, activating versions).
//! No valid key: 401 with `WWW-Authenticate`. A valid key without the scope, or for another
//! task: 403.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::{bail, Context};
use axum::http::Method;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a key may do; each scope includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

/// One entry of the key file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Who holds it (shown in logs, never the key).
    pub name: String,
    /// Hex sha256 of the key.
    pub sha256: String,
    pub scope: Scope,
    /// The tasks it may touch (absent: every task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<BTreeSet<String>>,
}

/// The key file: `{"keys": [{"name", "sha256", "scope", "tasks"?}, …]}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub keys: Vec<KeyEntry>,
}

/// An authenticated caller, put in the request's extensions.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub scope: Scope,
    pub tasks: Option<BTreeSet<String>>,
}

impl Principal {
    pub fn may_touch(&self, task: &str) -> bool {
        self.tasks.as_ref().is_none_or(|t| t.contains(task))
    }
}

#[derive(Debug, Clone)]
struct Key {
    hash: [u8; 32],
    principal: Principal,
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn parse_hash(hex_str: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(hex_str.trim()).context("sha256 must be 64 hex digits")?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("sha256 must be 64 hex digits"))
}

/// The keys in force; cheap to clone, replaced whole on reload.
#[derive(Clone, Default)]
pub struct Keys {
    inner: Arc<RwLock<Arc<Vec<Key>>>>,
    file: Option<PathBuf>,
    inline: Arc<Vec<Key>>,
    loaded: Arc<RwLock<Option<SystemTime>>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.read().map(|k| k.len()).unwrap_or(0);
        f.debug_struct("Keys")
            .field("keys", &n)
            .field("file", &self.file)
            .finish()
    }
}

impl Keys {
    /// From `--api-key` (comma-separated admin keys) and `--keys-file`. An empty key, an
    /// unreadable or invalid file, or a duplicate hash is an error: auth is never silently off.
    pub fn load(api_keys: Option<&str>, file: Option<&Path>) -> anyhow::Result<Self> {
        let mut inline = vec![];
        if let Some(list) = api_keys {
            for (i, k) in list.split(',').enumerate() {
                let k = k.trim();
                if k.is_empty() {
                    bail!("--api-key / SW2S_API_KEY holds an empty key; unset it to run without keys, or give non-empty keys separated by commas");
                }
                inline.push(Key {
                    hash: Sha256::digest(k.as_bytes()).into(),
                    principal: Principal {
                        name: format!("api-key-{}", i + 1),
                        scope: Scope::Admin,
                        tasks: None,
                    },
                });
            }
        }
        let keys = Keys {
            inner: Arc::default(),
            file: file.map(Path::to_path_buf),
            inline: Arc::new(inline),
            loaded: Arc::default(),
        };
        keys.reload()?;
        Ok(keys)
    }

    /// Re-reads the key file (if any); on error the keys in force stay as they were.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let mut all: Vec<Key> = self.inline.as_ref().clone();
        if let Some(path) = &self.file {
            let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the key file {}", path.display()))?;
            let file: KeyFile = serde_json::from_str(&text)
                .with_context(|| format!("parsing the key file {}", path.display()))?;
            for (i, e) in file.keys.into_iter().enumerate() {
                if e.name.trim().is_empty() {
                    bail!("key file entry {i} has no name");
                }
                let hash = parse_hash(&e.sha256)
                    .with_context(|| format!("key file entry {i} ({})", e.name))?;
                if let Some(tasks) = &e.tasks {
                    if tasks.is_empty() {
                        bail!("key file entry {i} ({}) lists no task; leave `tasks` out for every task", e.name);
                    }
                }
                all.push(Key {
                    hash,
                    principal: Principal {
                        name: e.name,
                        scope: e.scope,
                        tasks: e.tasks,
                    },
                });
            }
            if let Ok(mut l) = self.loaded.write() {
                *l = modified;
            }
        }
        let mut seen = BTreeSet::new();
        for k in &all {
            if !seen.insert(k.hash) {
                bail!("two keys have the same hash (the same key given twice)");
            }
        }
        let n = all.len();
        if let Ok(mut inner) = self.inner.write() {
            *inner = Arc::new(all);
        }
        Ok(n)
    }

    /// Reloads when the key file changed since it was read.
    pub fn reload_if_changed(&self) {
        let Some(path) = &self.file else { return };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let last = self.loaded.read().ok().and_then(|l| *l);
        if modified.is_some() && modified != last {
            match self.reload() {
                Ok(n) => tracing::info!(keys = n, "key file changed; keys reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "key file changed but cannot be used; the previous keys stay in force")
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inner.read().map(|k| k.is_empty()).unwrap_or(true) && self.file.is_none()
    }

    /// The principal a bearer token belongs to (comparing hashes in constant time).
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let keys = self.inner.read().ok()?.clone();
        let mut found = None;
        for k in keys.iter() {
            if constant_time_eq(&k.hash, &hash) {
                found = Some(k.principal.clone());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The scope a request needs, from its method and path (below `/v1`).
pub fn required_scope(method: &Method, path: &str) -> Scope {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if method == Method::GET || method == Method::HEAD {
        return Scope::Read;
    }
    match parts.as_slice() {
        ["embed"] | ["tasks", _, "predict"] => Scope::Read,
        ["tasks"] => Scope::Admin,
        ["tasks", _] => Scope::Admin,
        ["tasks", _, "models", _, "activate"] => Scope::Admin,
        _ => Scope::Write,
    }
}

/// The task a request is about (the segment after `tasks/` or `ls/`, percent-decoded).
pub fn task_of(path: &str) -> Option<String> {
    let mut parts = path.trim_matches('/').split('/');
    match (parts.next(), parts.next()) {
        (Some("tasks" | "ls"), Some(task)) if !task.is_empty() => Some(
            percent_encoding::percent_decode_str(task)
                .decode_utf8_lossy()
                .into_owned(),
        ),
        _ => None,
    }
}

/// The key in an `Authorization` header: `Bearer <key>`, or HTTP Basic with the key as the
/// password (or as the user name when the password is empty), as Label Studio sends an ML
/// backend's credentials.
fn token_of(header: &str) -> Option<String> {
    use base64::Engine;
    if let Some(t) = header.strip_prefix("Bearer ") {
        return Some(t.trim().to_string());
    }
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let pair = String::from_utf8(decoded).ok()?;
    let (user, password) = pair.split_once(':')?;
    Some(if password.is_empty() { user } else { password }.to_string())
}

/// The request's verdict: the caller, or the error to answer with.
pub fn check(
    keys: &Keys,
    method: &Method,
    path: &str,
    authorization: Option<&str>,
) -> Result<Option<Principal>, crate::error::Error> {
    use crate::error::Error;
    if keys.is_empty() {
        return Ok(None);
    }
    let token = authorization
        .and_then(token_of)
        .filter(|t| !t.is_empty())
        .ok_or(Error::Unauthorized)?;
    let token = token.as_str();
    let principal = keys.authenticate(token).ok_or(Error::Unauthorized)?;
    let needed = required_scope(method, path);
    if principal.scope < needed {
        return Err(Error::Forbidden(format!(
            "key {:?} has the {} scope; this request needs {}",
            principal.name,
            principal.scope.as_str(),
            needed.as_str()
        )));
    }
    match task_of(path) {
        Some(task) if !principal.may_touch(&task) => Err(Error::Forbidden(format!(
            "key {:?} may not touch task {task:?}",
            principal.name
        ))),
        // Listing and creating tasks is for keys not bound to tasks.
        None if principal.tasks.is_some()
            && path.trim_matches('/') == "tasks"
            && needed > Scope::Read =>
        {
            Err(Error::Forbidden(format!(
                "key {:?} is bound to tasks and cannot create one",
                principal.name
            )))
        }
        _ => Ok(Some(principal)),
    }
}

/// `sw2s keys …`.
pub fn run_command(command: crate::cli::KeysCommand) -> anyhow::Result<()> {
    use crate::cli::KeysCommand;
    match command {
        KeysCommand::New { name, scope, tasks } => {
            let key = format!(
                "sw2s_{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            let entry = KeyEntry {
                name,
                sha256: hash_key(&key),
                scope,
                tasks: (!tasks.is_empty()).then(|| tasks.into_iter().collect()),
            };
            println!("{key}");
            eprintln!(
                "give the key above to its holder; add this entry to the key file's \"keys\":"
            );
            eprintln!("{}", serde_json::to_string(&entry)?);
            Ok(())
        }
        KeysCommand::Hash => {
            let mut key = String::new();
            std::io::stdin().read_line(&mut key)?;
            let key = key.trim_end_matches(['\r', '\n']);
            if key.is_empty() {
                bail!("no key on standard input");
            }
            println!("{}", hash_key(key));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(entries: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), entries).unwrap();
        f
    }

    #[test]
    fn scopes_and_tasks_from_a_key_file() {
        let f = file_with(&format!(
            r#"{{"keys": [
                {{"name": "pipeline", "sha256": "{}", "scope": "write", "tasks": ["reviews"]}},
                {{"name": "ops", "sha256": "{}", "scope": "admin"}}
            ]}}"#,
            hash_key("k-pipeline"),
            hash_key("k-ops")
        ));
        let keys = Keys::load(None, Some(f.path())).unwrap();
        let p = keys.authenticate("k-pipeline").unwrap();
        assert_eq!(p.scope, Scope::Write);
        assert!(p.may_touch("reviews") && !p.may_touch("other"));
        assert_eq!(keys.authenticate("k-ops").unwrap().scope, Scope::Admin);
        assert!(keys.authenticate("nope").is_none());
        // Changing the file and reloading replaces the keys.
        std::fs::write(f.path(), r#"{"keys": []}"#).unwrap();
        keys.reload().unwrap();
        assert!(keys.authenticate("k-ops").is_none());
    }

    #[test]
    fn empty_keys_and_bad_files_are_errors() {
        assert!(Keys::load(Some(""), None).is_err());
        assert!(Keys::load(Some("a,,b"), None).is_err());
        let keys = Keys::load(Some("a, b"), None).unwrap();
        assert!(keys.authenticate("a").is_some() && keys.authenticate("b").is_some());
        let bad = file_with(r#"{"keys": [{"name": "x", "sha256": "12", "scope": "read"}]}"#);
        assert!(Keys::load(None, Some(bad.path())).is_err());
        let unknown = file_with(r#"{"keys": [{"name": "x", "sha256": "12", "scope": "root"}]}"#);
        assert!(Keys::load(None, Some(unknown.path())).is_err());
        assert!(Keys::load(None, Some(Path::new("/nonexistent/keys.json"))).is_err());
    }

    #[test]
    fn required_scopes_by_route() {
        assert_eq!(
            required_scope(&Method::GET, "/tasks/t/examples"),
            Scope::Read
        );
        assert_eq!(
            required_scope(&Method::POST, "/tasks/t/predict"),
            Scope::Read
        );
        assert_eq!(required_scope(&Method::POST, "/embed"), Scope::Read);
        assert_eq!(
            required_scope(&Method::POST, "/tasks/t/examples"),
            Scope::Write
        );
        assert_eq!(
            required_scope(&Method::PUT, "/tasks/t/examples/e/gold"),
            Scope::Write
        );
        assert_eq!(required_scope(&Method::POST, "/tasks/t/jobs"), Scope::Write);
        assert_eq!(required_scope(&Method::POST, "/tasks"), Scope::Admin);
        assert_eq!(required_scope(&Method::DELETE, "/tasks/t"), Scope::Admin);
        assert_eq!(required_scope(&Method::PATCH, "/tasks/t"), Scope::Admin);
        assert_eq!(
            required_scope(&Method::POST, "/tasks/t/models/2/activate"),
            Scope::Admin
        );
        assert_eq!(
            task_of("/tasks/re%2Fviews/examples"),
            Some("re/views".into())
        );
        assert_eq!(task_of("/tasks"), None);
        assert_eq!(task_of("/ls/reviews/predict"), Some("reviews".into()));
        assert_eq!(required_scope(&Method::POST, "/ls/t/webhook"), Scope::Write);
        assert_eq!(required_scope(&Method::GET, "/ls/t/health"), Scope::Read);
        assert_eq!(token_of("Bearer k1").as_deref(), Some("k1"));
        assert_eq!(token_of("Basic dXNlcjprMg==").as_deref(), Some("k2"));
        assert_eq!(token_of("Basic azM6").as_deref(), Some("k3"));
        assert_eq!(token_of("Digest x"), None);
        assert_eq!(task_of("/embed"), None);
    }
}
