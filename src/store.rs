//! The state directory (`--root`): one directory per container, named by its
//! ID, holding libcontainer's `state.json` and `youki_config.json`.
//!
//! Every command that names a container goes through [`Store::load`], so the
//! ID is validated (runc's rule) before any path is built from it, and an
//! unknown ID gives the message containerd's shim recognises as "not found".

use std::fs;
use std::path::{Path, PathBuf};

use libcontainer::container::state::State;
use libcontainer::container::Container;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    /// The shim matches "does not exist" to tolerate deleting a gone container.
    #[error("container \"{0}\" does not exist")]
    NotExist(String),

    #[error("container \"{0}\" already exists in {1}: pick another ID or delete it first")]
    AlreadyExists(String, PathBuf),

    #[error("invalid container ID {id:?}: {why}")]
    InvalidId { id: String, why: &'static str },

    #[error("failed to load the state of container \"{id}\" from {path}: {source}")]
    Load {
        id: String,
        path: PathBuf,
        #[source]
        source: libcontainer::error::LibcontainerError,
    },

    #[error("failed to read the state directory {path}: {source}")]
    ReadRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// runc's rule (`libcontainer/container_linux.go` idRegex `^[\w+\-\.]+$`,
/// and not `.` or `..`): the ID becomes a directory name under `--root`.
pub fn validate_id(id: &str) -> Result<(), StoreError> {
    let invalid = |why| {
        Err(StoreError::InvalidId {
            id: id.to_string(),
            why,
        })
    };
    if id.is_empty() {
        return invalid("it is empty");
    }
    if id == "." || id == ".." {
        return invalid("\".\" and \"..\" are not container IDs");
    }
    if id.len() > 1024 {
        return invalid("it is longer than 1024 bytes");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'))
    {
        return invalid("only letters, digits and _ + - . are allowed");
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of container `id` (the ID must be valid).
    pub fn container_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        validate_id(id)?;
        Ok(self.root.join(id))
    }

    /// Fail if `id` is taken, before anything is created.
    pub fn ensure_free(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.container_dir(id)?;
        if dir.exists() {
            return Err(StoreError::AlreadyExists(id.to_string(), self.root.clone()));
        }
        Ok(())
    }

    /// Load container `id`, with its status refreshed from /proc.
    pub fn load(&self, id: &str) -> Result<Container, StoreError> {
        let dir = self.container_dir(id)?;
        if !State::file_path(&dir).exists() {
            return Err(StoreError::NotExist(id.to_string()));
        }
        Container::load(dir.clone()).map_err(|source| StoreError::Load {
            id: id.to_string(),
            path: dir,
            source,
        })
    }

    /// IDs of all containers with a state file, sorted.
    pub fn ids(&self) -> Result<Vec<String>, StoreError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::ReadRoot {
                    path: self.root.clone(),
                    source,
                })
            }
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| State::file_path(&e.path()).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| validate_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_ok() {
        for id in ["a", "abc-123", "x_y.z+1", "0123456789abcdef"] {
            validate_id(id).unwrap();
        }
    }

    #[test]
    fn invalid_ids_ng() {
        for id in ["", ".", "..", "a/b", "../x", "a b", "a\nb", "é"] {
            assert!(validate_id(id).is_err(), "{id:?} accepted");
        }
    }

    #[test]
    fn load_unknown_says_does_not_exist_ng() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::new(dir.path()).load("nope").unwrap_err();
        assert_eq!(err.to_string(), "container \"nope\" does not exist");
    }

    #[test]
    fn ids_of_missing_root_is_empty_ok() {
        assert!(Store::new("/nonexistent/cntrlive-test")
            .ids()
            .unwrap()
            .is_empty());
    }
}
