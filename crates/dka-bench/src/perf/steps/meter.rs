//! How busy the machine is while the bench runs: load averages, and the cores the machine's
//! other processes take (busy CPU time of the machine minus that of the bench's processes).

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`, 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// Busy CPU seconds of the whole machine (all cores) from /proc/stat.
fn machine_busy_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<f64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = v.iter().take(8).sum::<f64>() - v.get(3)? - v.get(4).unwrap_or(&0.0);
    Some(busy / CLK_TCK)
}

/// CPU seconds (user + system, all threads) of process `pid`.
fn process_cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields after it start at ") ".
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / CLK_TCK)
}

/// How much CPU the rest of the machine took while the bench ran: busy CPU seconds of the
/// machine minus those of the bench's own processes.
pub struct CpuMeter {
    pub pids: Vec<u32>,
}

impl CpuMeter {
    pub fn snapshot(&self) -> Option<(f64, f64)> {
        let ours: Option<f64> = self.pids.iter().map(|&p| process_cpu_s(p)).sum();
        Some((machine_busy_s()?, ours?))
    }

    /// Cores the other processes used on average since `before`, over `wall` seconds.
    pub fn others_since(&self, before: Option<(f64, f64)>, wall: f64) -> Option<f64> {
        let (m0, o0) = before?;
        let (m1, o1) = self.snapshot()?;
        Some((((m1 - m0) - (o1 - o0)) / wall.max(1e-3)).max(0.0))
    }
}
