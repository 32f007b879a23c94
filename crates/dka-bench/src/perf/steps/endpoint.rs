//! The processes of `dka bench steps`: each implementation of a case runs in its own worker
//! (a `dka bench worker` child or the Python reference, speaking JSON lines; in tests, this
//! process), started by a [`Launcher`] with the same threads and subnormal settings.

use super::StepsOptions;
use crate::perf::steps::cases::Impl;
use crate::perf::steps::protocol::Request;
use crate::perf::steps::server::Server;
use anyhow::{bail, Context};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// A worker: a child process speaking JSON lines, or (in tests) this process.
pub enum Endpoint {
    Child {
        label: String,
        child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
    },
    InProcess(Box<Server>),
}

impl Endpoint {
    /// Starts `cmd` and waits for its `{"ready": true}`.
    pub fn spawn(label: &str, mut cmd: Command) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the {label} worker ({cmd:?})"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut e = Endpoint::Child {
            label: label.to_string(),
            child,
            stdin,
            stdout,
        };
        let ready = e.read_reply()?;
        if ready.get("ready") != Some(&Value::Bool(true)) {
            bail!("the {label} worker did not start: {ready}");
        }
        Ok(e)
    }

    fn read_reply(&mut self) -> anyhow::Result<Value> {
        let Endpoint::Child { label, stdout, .. } = self else {
            unreachable!("only child workers read replies");
        };
        loop {
            let mut line = String::new();
            if stdout.read_line(&mut line)? == 0 {
                bail!("the {label} worker exited (see its messages above)");
            }
            match serde_json::from_str::<Value>(line.trim()) {
                Ok(v @ Value::Object(_)) => return Ok(v),
                _ => tracing::debug!("{label}: {}", line.trim_end()),
            }
        }
    }

    /// The worker's process id (this process for an in-process worker).
    pub fn pid(&self) -> u32 {
        match self {
            Endpoint::Child { child, .. } => child.id(),
            Endpoint::InProcess(_) => std::process::id(),
        }
    }

    /// Sends a request and returns the reply (an error when the worker reports one).
    pub fn call(&mut self, req: &Request) -> anyhow::Result<Value> {
        let reply = match self {
            Endpoint::InProcess(s) => s
                .handle(req.clone())?
                .unwrap_or(Value::Object(Default::default())),
            Endpoint::Child { stdin, .. } => {
                writeln!(stdin, "{}", serde_json::to_string(req)?)?;
                stdin.flush()?;
                if matches!(req, Request::Quit) {
                    return Ok(Value::Null);
                }
                let r = self.read_reply()?;
                if r.get("ok") != Some(&Value::Bool(true)) {
                    bail!(
                        "{}",
                        r.get("error")
                            .and_then(Value::as_str)
                            .unwrap_or("the worker failed")
                    );
                }
                r
            }
        };
        Ok(reply)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Endpoint::Child { stdin, child, .. } = self {
            let _ = writeln!(stdin, "{{\"cmd\":\"quit\"}}");
            let _ = stdin.flush();
            let _ = child.wait();
        }
    }
}

/// How workers are started.
pub struct Launcher {
    pub python: PathBuf,
    pub reference: PathBuf,
    /// `None`: this project's workers run in this process (tests).
    pub worker_exe: Option<PathBuf>,
    /// Environment of every worker (threads, subnormals).
    pub env: Vec<(String, String)>,
}

impl Launcher {
    pub fn new(args: &StepsOptions, worker_exe: Option<PathBuf>) -> Self {
        let mut env = Vec::new();
        if let Some(n) = args.threads {
            env.push(("OMP_NUM_THREADS".into(), n.to_string()));
            env.push(("MKL_NUM_THREADS".into(), n.to_string()));
        }
        if !args.keep_subnormals {
            env.push((
                crate::perf::steps::server::FLUSH_DENORMAL_ENV.into(),
                "1".into(),
            ));
        }
        Self {
            python: args.python.clone(),
            reference: args.reference.clone(),
            worker_exe,
            env,
        }
    }

    pub fn start(&self, imp: Impl) -> anyhow::Result<Endpoint> {
        match imp {
            Impl::Reference => {
                let mut c = Command::new(&self.python);
                c.arg(&self.reference).envs(self.env.iter().cloned());
                Endpoint::spawn("pytorch", c)
            }
            Impl::Ours { .. } => match &self.worker_exe {
                Some(exe) => {
                    let mut c = Command::new(exe);
                    c.args(["bench", "worker"]).envs(self.env.iter().cloned());
                    c.env("RUST_LOG", "warn");
                    Endpoint::spawn("dka", c)
                }
                None => Ok(Endpoint::InProcess(Box::default())),
            },
        }
    }
}
