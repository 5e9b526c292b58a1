//! What the generator reads about processes (`/proc`) and Redis (`INFO commandstats`).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::Duration,
};

/// User + system CPU seconds of a process (all its threads, live and exited).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    use std::sync::OnceLock;
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        // SAFETY: sysconf has no preconditions; it only reads a system constant.
        let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if v > 0 { v as f64 } else { 100.0 }
    })
}

/// Machine-wide CPU seconds: (busy, steal), from the `cpu` line of `/proc/stat`.
pub fn machine_cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?;
    let steal = *v.get(7).unwrap_or(&0);
    let t = clock_ticks();
    Some((busy as f64 / t, steal as f64 / t))
}

/// Resident set size in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A tiny RESP client for the two commands the harness needs.
pub struct Redis {
    stream: TcpStream,
}

impl Redis {
    pub fn connect(addr: &str) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Self { stream })
    }

    fn command(&mut self, cmd: &str) -> std::io::Result<String> {
        self.stream.write_all(format!("{cmd}\r\n").as_bytes())?;
        let mut reader = BufReader::new(&mut self.stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if let Some(len) = line.strip_prefix('$') {
            let len: usize = len.trim().parse().unwrap_or(0);
            let mut buf = vec![0; len + 2];
            reader.read_exact(&mut buf)?;
            buf.truncate(len);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        } else {
            Ok(line.trim().to_owned())
        }
    }

    /// Number of keys in the current database.
    pub fn dbsize(&mut self) -> std::io::Result<u64> {
        let reply = self.command("DBSIZE")?;
        Ok(reply.trim_start_matches(':').parse().unwrap_or(0))
    }

    /// Number of keys matching `pattern` (a small script over `KEYS`: the bench's Redis holds
    /// a handful of keys once a run is over).
    pub fn count_keys(&mut self, pattern: &str) -> std::io::Result<u64> {
        let reply = self.command(&format!(
            "EVAL \"return #redis.call('KEYS', ARGV[1])\" 0 {pattern}"
        ))?;
        Ok(reply.trim_start_matches(':').parse().unwrap_or(0))
    }

    /// Calls per command (since Redis started or its last CONFIG RESETSTAT), without the
    /// harness's own CONFIG/INFO.
    pub fn command_calls(&mut self) -> std::io::Result<BTreeMap<String, u64>> {
        let info = self.command("INFO commandstats")?;
        let mut out = BTreeMap::new();
        for line in info.lines() {
            let Some(rest) = line.strip_prefix("cmdstat_") else {
                continue;
            };
            let Some((name, stats)) = rest.split_once(':') else {
                continue;
            };
            // The harness's own commands (`config|resetstat` on Redis 7+).
            if name.starts_with("config") || name.starts_with("info") {
                continue;
            }
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            out.insert(name.to_owned(), calls);
        }
        Ok(out)
    }
}
