//! A small client of dockerd's HTTP API (over its unix socket, through
//! libcurl), for docker-managed migration: inspect the container on the
//! source daemon, create its twin on the destination daemon, start it from
//! a checkpoint, remove what is left.
//!
//! API version 1.41 (docker 20.10) is asked for: every later dockerd
//! accepts it, and it has what migration needs (checkpoints on `start`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

const API: &str = "v1.41";

pub struct Docker {
    socket: PathBuf,
}

/// What a docker-managed container looks like to its daemon.
pub struct Inspected {
    pub id: String,
    pub name: String,
    pub running: bool,
    pub runtime: String,
    /// `Config` with `HostConfig` merged in: a create request's body.
    pub create: Value,
    /// The image as the container was created from (`Config.Image`).
    pub image: String,
    pub driver: String,
    /// overlay2's writable layer.
    pub upper: Option<PathBuf>,
}

impl Docker {
    /// `unix:///path`, or a socket path.
    pub fn connect(host: &str) -> Result<Docker> {
        let path = host.strip_prefix("unix://").unwrap_or(host);
        if host.contains("://") && !host.starts_with("unix://") {
            bail!("--docker-host {host}: only unix sockets are supported (unix:///var/run/docker.sock)");
        }
        Ok(Docker {
            socket: PathBuf::from(path),
        })
    }

    /// One request; the JSON answer (Null if empty). A status ≥ 300 is an
    /// error with dockerd's own message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut e = curl::easy::Easy::new();
        let what = format!("{method} {path}");
        let setup = (|| -> std::result::Result<(), curl::Error> {
            e.unix_socket_path(Some(&self.socket))?;
            e.url(&format!("http://docker/{API}{path}"))?;
            e.custom_request(method)?;
            let mut h = curl::easy::List::new();
            h.append("Content-Type: application/json")?;
            e.http_headers(h)?;
            if let Some(b) = body {
                e.post_fields_copy(b.to_string().as_bytes())?;
            } else if method == "POST" {
                e.post_fields_copy(b"")?;
            }
            Ok(())
        })();
        setup.with_context(|| format!("docker API {what}"))?;
        let mut out = Vec::new();
        {
            let mut t = e.transfer();
            t.write_function(|d| {
                out.extend_from_slice(d);
                Ok(d.len())
            })?;
            t.perform().with_context(|| {
                format!("cannot reach dockerd at {} ({what})", self.socket.display())
            })?;
        }
        let code = e.response_code()?;
        let v: Value = if out.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&out).trim().to_string()))
        };
        if code >= 300 {
            let msg = v
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            bail!("dockerd answered {code} to {what}: {msg}");
        }
        Ok(v)
    }

    pub fn info(&self) -> Result<Value> {
        self.call("GET", "/info", None)
    }

    /// None: no such container.
    pub fn inspect(&self, name: &str) -> Result<Option<Inspected>> {
        let v = match self.call("GET", &format!("/containers/{}/json", enc(name)), None) {
            Ok(v) => v,
            Err(e) if format!("{e}").contains("answered 404") => return Ok(None),
            Err(e) => return Err(e),
        };
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default();
        let mut create = v.get("Config").cloned().unwrap_or(Value::Null);
        if let Some(o) = create.as_object_mut() {
            o.insert(
                "HostConfig".into(),
                v.get("HostConfig").cloned().unwrap_or(Value::Null),
            );
        }
        Ok(Some(Inspected {
            id: s("/Id").to_string(),
            name: s("/Name").trim_start_matches('/').to_string(),
            running: v.pointer("/State/Running") == Some(&Value::Bool(true)),
            runtime: s("/HostConfig/Runtime").to_string(),
            image: s("/Config/Image").to_string(),
            driver: s("/GraphDriver/Name").to_string(),
            upper: v
                .pointer("/GraphDriver/Data/UpperDir")
                .and_then(Value::as_str)
                .map(PathBuf::from),
            create,
        }))
    }

    /// The image's layers (content digests), None if it is not here.
    pub fn image_layers(&self, image: &str) -> Result<Option<Vec<String>>> {
        match self.call("GET", &format!("/images/{}/json", enc(image)), None) {
            Ok(v) => Ok(Some(
                v.pointer("/RootFS/Layers")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            )),
            Err(e) if format!("{e}").contains("answered 404") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Create a container named `name`; its ID.
    pub fn create(&self, name: &str, body: &Value) -> Result<String> {
        let v = self.call(
            "POST",
            &format!("/containers/create?name={}", enc(name)),
            Some(body),
        )?;
        v.get("Id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .context("dockerd's create answer has no Id")
    }

    /// `docker start --checkpoint NAME`.
    pub fn start_from_checkpoint(&self, id: &str, checkpoint: &str) -> Result<()> {
        self.call(
            "POST",
            &format!(
                "/containers/{}/start?checkpoint={}",
                enc(id),
                enc(checkpoint)
            ),
            None,
        )?;
        Ok(())
    }

    pub fn remove_checkpoint(&self, id: &str, checkpoint: &str) -> Result<()> {
        self.call(
            "DELETE",
            &format!("/containers/{}/checkpoints/{}", enc(id), enc(checkpoint)),
            None,
        )?;
        Ok(())
    }

    /// `docker checkpoint create [--leave-running=!exit] ID NAME`.
    pub fn checkpoint(&self, id: &str, name: &str, exit: bool) -> Result<()> {
        self.call(
            "POST",
            &format!("/containers/{}/checkpoints", enc(id)),
            Some(&serde_json::json!({"CheckpointID": name, "Exit": exit})),
        )?;
        Ok(())
    }

    /// Every container (`docker ps -a`): ID, first name, running.
    pub fn containers(&self) -> Result<Vec<(String, String, bool)>> {
        let v = self.call("GET", "/containers/json?all=1", None)?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default();
                let name = c
                    .pointer("/Names/0")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .trim_start_matches('/');
                (
                    s("Id").to_string(),
                    name.to_string(),
                    s("State") == "running",
                )
            })
            .collect())
    }

    /// Where dockerd keeps its containers' checkpoints: the store of
    /// container `id`'s checkpoint `name` is `<this>/id/checkpoints/name`
    /// ([`checkpoint_dir`]). One `info` call for a whole batch.
    pub fn containers_dir(&self) -> Result<PathBuf> {
        let info = self.info()?;
        let root = info
            .get("DockerRootDir")
            .and_then(Value::as_str)
            .context("dockerd's info has no DockerRootDir")?;
        Ok(Path::new(root).join("containers"))
    }

    /// A batch's child command (`cntrlive-runtime docker OP …`).
    pub fn op(
        &self,
        op: crate::cli::DockerOp,
        id: &str,
        checkpoint: Option<&str>,
        leave_running: bool,
    ) -> Result<()> {
        use crate::cli::DockerOp;
        let cp = || checkpoint.context("a checkpoint name is needed");
        match op {
            DockerOp::Remove => self.remove(id),
            DockerOp::Checkpoint => {
                // A checkpoint of that name from an earlier batch goes.
                let _ = self.remove_checkpoint(id, cp()?);
                self.checkpoint(id, cp()?, !leave_running)
            }
            DockerOp::Start => match self.start_from_checkpoint(id, cp()?) {
                // moby/moby#42900: dockerd's own occasional upload error,
                // before any runtime is called; once more.
                Err(e) if format!("{e}").contains("already exists") => {
                    self.start_from_checkpoint(id, cp()?)
                }
                r => r,
            },
        }
    }

    /// `docker rm -f`.
    pub fn remove(&self, id: &str) -> Result<()> {
        self.call(
            "DELETE",
            &format!("/containers/{}?force=1&v=1", enc(id)),
            None,
        )?;
        Ok(())
    }
}

/// Container `id`'s checkpoint `name` under [`Docker::containers_dir`].
pub fn checkpoint_dir(containers: &Path, id: &str, name: &str) -> PathBuf {
    containers.join(id).join("checkpoints").join(name)
}

/// Percent-encode a path segment or query value.
fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// The directory dockerd gives its runtimes as `--root`:
/// `<exec-root>/runtime-runc/moby` (for every runtime, ours too;
/// ../shared/CONTRACT.md). With no exec root given, the default one
/// (/run/docker) and then /run/*/ and /run/*/*/ are searched for the one
/// that holds the container `id`'s state (IDs are 64 hex digits: unique).
pub fn runtime_root(exec_root: Option<&Path>, id: &str) -> Result<PathBuf> {
    let tail = Path::new("runtime-runc").join("moby");
    if let Some(e) = exec_root {
        return Ok(e.join(&tail));
    }
    let mut bases = vec![PathBuf::from("/run/docker")];
    for d in std::fs::read_dir("/run").into_iter().flatten().flatten() {
        bases.push(d.path());
        bases.extend(
            std::fs::read_dir(d.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|x| x.path()),
        );
    }
    bases
        .into_iter()
        .map(|b| b.join(&tail))
        .find(|r| r.join(id).join("state.json").is_file())
        .with_context(|| {
            format!(
                "cannot find container {id}'s runtime state under /run/…/runtime-runc/moby: pass dockerd's --exec-root as --docker-exec-root"
            )
        })
}

/// A Ctx like `ctx` whose state root is the one dockerd gave the
/// runtime for container `id` (see [`runtime_root`]).
pub fn runtime_ctx(
    ctx: &crate::commands::Ctx,
    exec_root: Option<&Path>,
    id: &str,
) -> Result<crate::commands::Ctx> {
    Ok(crate::commands::Ctx::new(crate::cli::GlobalOpts {
        root: runtime_root(exec_root, id)?,
        ..ctx.global.clone()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_names_and_queries_ok() {
        assert_eq!(enc("busybox:local"), "busybox:local");
        assert_eq!(enc("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn only_unix_sockets_ng() {
        assert!(Docker::connect("tcp://1.2.3.4:2375").is_err());
        assert_eq!(
            Docker::connect("unix:///run/d.sock").unwrap().socket,
            PathBuf::from("/run/d.sock")
        );
    }
}
