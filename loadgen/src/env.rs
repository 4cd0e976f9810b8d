//! The environment header of every report: what machine, kernel, compiler,
//! code and command produced the numbers. Read once at start from `/proc`,
//! `git` and the build.

use serde::{Deserialize, Serialize};

/// Where and how a report was produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Env {
    pub hostname: String,
    /// `model name` of the first CPU in `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Logical CPUs this process may run on (its affinity, e.g. `taskset`).
    pub cores: usize,
    /// Logical CPUs online on the machine.
    pub cores_online: usize,
    /// `uname -r`.
    pub kernel: String,
    /// `rustc --version` of the compiler that built loadgen.
    pub rustc: String,
    /// `git rev-parse HEAD` of the source tree loadgen was built from.
    pub git_sha: String,
    /// Uncommitted changes in that tree when the report was written.
    pub git_dirty: bool,
    /// The exact command line.
    pub command: Vec<String>,
    /// Soft limit on open files (sockets) of this process.
    pub open_file_limit: Option<u64>,
    pub pid: u32,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix_s: u64,
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn git(args: &[&str]) -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Env {
    /// Reads the environment of this process.
    pub fn capture() -> Env {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default();
        Env {
            hostname: read_trim("/proc/sys/kernel/hostname"),
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cores_online: std::fs::read_to_string("/proc/cpuinfo")
                .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
                .unwrap_or(0),
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            rustc: env!("LOADGEN_RUSTC_VERSION").to_owned(),
            git_sha: git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            git_dirty: git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()),
            command: std::env::args().collect(),
            open_file_limit: crate::stats::open_file_limit(),
            pid: std::process::id(),
            started_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// One line for the top of a table.
    pub fn one_line(&self) -> String {
        format!(
            "{} · {} of {} cores · {} · kernel {} · {} · git {}{}",
            self.hostname,
            self.cores,
            self.cores_online,
            self.cpu_model,
            self.kernel,
            self.rustc,
            &self.git_sha[..self.git_sha.len().min(12)],
            if self.git_dirty { " (dirty)" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_fills_the_header() {
        let e = Env::capture();
        assert!(e.cores >= 1);
        assert!(!e.kernel.is_empty());
        assert!(e.rustc.starts_with("rustc "), "{}", e.rustc);
        assert!(!e.command.is_empty());
        assert!(e.one_line().contains("kernel"));
    }
}
