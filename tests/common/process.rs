//! `waypoint serve` as a child process: started on a free port, its stderr kept, stopped with
//! SIGTERM (a graceful shutdown) or killed when dropped. Shared by the integration tests and
//! `examples/tracing_overhead.rs` (which includes this file by path).
#![allow(dead_code)] // each user takes a different subset

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct ServerProcess {
    child: Child,
    /// `http://HOST:PORT`, once the server said it is ready (empty before).
    pub base_url: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Runs `waypoint serve --model tiny --port 0 <args>` with `envs` (and `RUST_LOG=info`
    /// unless given), and waits for its "waypoint ready" line. For the integration tests,
    /// which have the binary's path; panics on failure.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        // `option_env!`: this file is also built into an example, which has no such variable
        // and does not call this.
        let Some(binary) = option_env!("CARGO_BIN_EXE_waypoint") else {
            panic!("only integration tests know the waypoint binary's path");
        };
        let mut server = Self::spawn(Path::new(binary), "tiny", args, envs)
            .unwrap_or_else(|error| panic!("{error}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !server
            .poll_ready()
            .unwrap_or_else(|error| panic!("{error}"))
        {
            assert!(Instant::now() < deadline, "waypoint serve never got ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Starts `binary serve --model MODEL --port 0 <args>` with `envs`, without waiting:
    /// call [`Self::poll_ready`] until it says so.
    pub fn spawn<A: AsRef<OsStr>>(
        binary: &Path,
        model: &str,
        args: &[A],
        envs: &[(&str, &str)],
    ) -> Result<Self, String> {
        let mut command = Command::new(binary);
        command
            .args(["serve", "--model", model, "--port", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in envs {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", binary.display()))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("stderr is piped");
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Ok(Self {
            child,
            base_url: String::new(),
            stderr,
        })
    }

    /// Whether the server said "waypoint ready" (then `base_url` is set); an error if it
    /// exited first.
    pub fn poll_ready(&mut self) -> Result<bool, String> {
        if !self.base_url.is_empty() {
            return Ok(true);
        }
        let ready = self
            .stderr
            .lock()
            .unwrap()
            .iter()
            .find(|line| line.contains("waypoint ready"))
            .cloned();
        if let Some(line) = ready {
            let address = field(&line, "address").ok_or(format!("no address in {line:?}"))?;
            self.base_url = format!("http://{address}");
            return Ok(true);
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!(
                "waypoint serve exited with {status} before it was ready:\n{}",
                self.stderr().join("\n")
            ));
        }
        Ok(false)
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends `signal` (`TERM`, `INT`) without waiting.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {pid} failed");
    }

    /// The exit status, if the process ends within `bound`.
    pub fn exited_within(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `HOST:PORT` it listens on.
    pub fn address(&self) -> &str {
        self.base_url.trim_start_matches("http://")
    }

    /// Sends SIGTERM (a graceful shutdown); see [`Self::try_wait`].
    pub fn send_sigterm(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(
            sent.is_ok_and(|status| status.success()),
            "kill -TERM {pid} failed"
        );
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// SIGTERM, then waits for the exit status (a graceful shutdown exits 0).
    pub fn terminate(mut self) -> ExitStatus {
        self.send_sigterm();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "waypoint serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The value of `name=VALUE` in a log line.
pub fn field(line: &str, name: &str) -> Option<String> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    let rest = &line[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
