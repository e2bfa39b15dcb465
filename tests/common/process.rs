//! `waypoint serve` as a child process: started on a free port, its stderr kept for the test,
//! stopped with SIGTERM (a graceful shutdown) or killed when dropped.
#![allow(dead_code)] // each test uses a different subset

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct ServerProcess {
    child: Child,
    pub base_url: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Runs `waypoint serve --model tiny --port 0 <args>` with `envs` (and `RUST_LOG=info`
    /// unless given), and waits for its "waypoint ready" line.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_waypoint"));
        command
            .args(["serve", "--model", "tiny", "--port", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in envs {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("cannot start waypoint serve");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().unwrap();
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let address = loop {
            let ready = stderr
                .lock()
                .unwrap()
                .iter()
                .find(|line| line.contains("waypoint ready"))
                .cloned();
            if let Some(line) = ready {
                break address_in(&line).unwrap_or_else(|| panic!("no address in {line:?}"));
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "waypoint serve exited with {status} before it was ready:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
            assert!(Instant::now() < deadline, "waypoint serve never got ready");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            base_url: format!("http://{address}"),
            stderr,
        }
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

    /// SIGTERM, then waits for the exit status (a graceful shutdown exits 0).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "waypoint serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `address=HOST:PORT` field of the ready line.
fn address_in(line: &str) -> Option<String> {
    let start = line.find("address=")? + "address=".len();
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
