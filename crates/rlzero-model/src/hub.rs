//! Resolving files of a Hugging Face Hub repo, through the `hf-hub` crate's synchronous API.
//!
//! The cache layout is Python `huggingface_hub`'s (`<cache>/models--org--name/{blobs,snapshots,refs}`),
//! so a model downloaded from Python is found here and vice versa. Environment, as in Python:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `HF_HOME` | root of the cache and the token file | `~/.cache/huggingface` |
//! | `HF_HUB_CACHE` | the hub cache itself | `$HF_HOME/hub` |
//! | `HF_ENDPOINT` | Hub URL (mirrors, or a local test server) | `https://huggingface.co` |
//! | `HF_TOKEN` | access token for gated/private repos | `$HF_HOME/token` if present |
//! | `HF_HUB_OFFLINE` | `1`: never touch the network, read the cache only | off |

use std::path::PathBuf;

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{ModelError, Result};

/// Where and how to reach the Hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Hub base URL (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: String,
    /// The hub cache directory (`HF_HUB_CACHE`, default `$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// Access token for gated/private repos (`HF_TOKEN`, else `$HF_HOME/token`).
    pub token: Option<String>,
    /// Read the cache only; a file that is not cached is an error, not a download.
    pub offline: bool,
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl HubOptions {
    /// Options from the environment variables in the module docs.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Options from any variable lookup (the environment, or a map in tests).
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |k: &str| lookup(k).filter(|v| !v.is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let home = var("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            home.join(".cache").join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(hf_home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        Self {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            cache_dir,
            token,
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
        }
    }
}

/// One model repo at one revision.
pub struct HubRepo {
    /// `org/name`.
    pub repo_id: String,
    /// Branch, tag or commit hash.
    pub revision: String,
    opts: HubOptions,
}

impl HubRepo {
    /// `repo_id` at `revision`, reached with `opts`; touches neither the cache nor the network.
    pub fn new(repo_id: impl Into<String>, revision: impl Into<String>, opts: HubOptions) -> Self {
        Self {
            repo_id: repo_id.into(),
            revision: revision.into(),
            opts,
        }
    }

    fn err(&self, file: &str, reason: impl Into<String>) -> ModelError {
        ModelError::Hub {
            repo: self.repo_id.clone(),
            file: file.to_string(),
            reason: reason.into(),
        }
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(self.repo_id.clone(), RepoType::Model, self.revision.clone())
    }

    /// The cached copy of `file`, if any: via `refs/<revision>`, or directly under
    /// `snapshots/<revision>` when the revision is a commit hash.
    pub fn cached(&self, file: &str) -> Option<PathBuf> {
        let cache = Cache::new(self.opts.cache_dir.clone());
        if let Some(p) = cache.repo(self.repo()).get(file) {
            return Some(p);
        }
        let folder = format!("models--{}", self.repo_id.replace('/', "--"));
        let direct = self
            .opts
            .cache_dir
            .join(folder)
            .join("snapshots")
            .join(&self.revision)
            .join(file);
        direct.exists().then_some(direct)
    }

    /// The local path of `file`, downloading it unless cached. `Ok(None)` when the repo has no
    /// such file (HTTP 404, or offline and not cached) — the caller decides if that is fatal.
    pub fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        if let Some(p) = self.cached(file) {
            return Ok(Some(p));
        }
        if self.opts.offline {
            return Ok(None);
        }
        let api = ApiBuilder::from_cache(Cache::new(self.opts.cache_dir.clone()))
            .with_endpoint(self.opts.endpoint.clone())
            .with_token(self.opts.token.clone())
            .with_progress(false)
            .build()
            .map_err(|e| self.err(file, e.to_string()))?;
        match api.repo(self.repo()).download(file) {
            Ok(p) => Ok(Some(p)),
            Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(404, _)) => Ok(None),
            Err(e) => Err(self.err(file, e.to_string())),
        }
    }

    /// Like [`HubRepo::get`] but the file must exist.
    pub fn require(&self, file: &str) -> Result<PathBuf> {
        self.get(file)?.ok_or_else(|| {
            if self.opts.offline {
                self.err(
                    file,
                    format!(
                        "not in the cache at {} (HF_HUB_OFFLINE is set)",
                        self.opts.cache_dir.display()
                    ),
                )
            } else {
                self.err(file, "not found in the repository")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(vars: &[(&str, &str)]) -> HubOptions {
        let map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubOptions::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn environment_follows_huggingface_hub() {
        let o = opts(&[("HOME", "/home/u")]);
        assert_eq!(o.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(o.endpoint, "https://huggingface.co");
        assert!(!o.offline && o.token.is_none());

        let o = opts(&[
            ("HF_HOME", "/data/hf"),
            ("HF_ENDPOINT", "http://127.0.0.1:8080"),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_TOKEN", "hf_x"),
        ]);
        assert_eq!(o.cache_dir, PathBuf::from("/data/hf/hub"));
        assert_eq!(o.endpoint, "http://127.0.0.1:8080");
        assert!(o.offline);
        assert_eq!(o.token.as_deref(), Some("hf_x"));

        let o = opts(&[
            ("HF_HOME", "/data/hf"),
            ("HF_HUB_CACHE", "/fast/cache"),
            ("HF_HUB_OFFLINE", "0"),
        ]);
        assert_eq!(o.cache_dir, PathBuf::from("/fast/cache"));
        assert!(!o.offline);
    }
}
