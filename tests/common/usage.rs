//! What a benchmark process cost: CPU time and peak memory from /proc. Shared by the
//! swarm bench (`benches/swarm.rs`) and the simulator's bench (`sim/benches/sim.rs`).

/// CPU seconds (utime + stime, in clock ticks of 1/100 s) and peak RSS in MB (VmHWM) of this
/// process, from /proc; zeros where /proc cannot be read. Both benchmarks report these.
pub(crate) fn process_usage() -> (f64, f64) {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb / 1024.0)
        })
        .unwrap_or(0.0);
    (cpu, rss)
}
