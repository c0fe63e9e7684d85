//! Memory and CPU of a process, from `/proc` (Linux).

use std::time::Duration;

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux for every
/// architecture this runs on; reading it with `sysconf` would need `unsafe`).
const USER_HZ: f64 = 100.0;

/// A `kB` field (`VmHWM`, `VmRSS`) of `/proc/<pid>/status`, in bytes.
pub fn status_field_bytes(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// User plus system CPU time from the contents of `/proc/<pid>/stat`.
pub fn stat_cpu(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may contain spaces: count fields
    // after the last ')'. utime and stime are fields 14 and 15 overall, i.e. 12 and 13
    // after the name (state is the first one there).
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) as f64 / USER_HZ))
}

/// Peak resident set size (`VmHWM`) of `pid`.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_bytes(&status, "VmHWM")
}

/// Current resident set size (`VmRSS`) of `pid`.
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_bytes(&status, "VmRSS")
}

/// CPU time used so far by `pid` (all its threads).
pub fn cpu(pid: u32) -> Option<Duration> {
    stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memory_fields_in_bytes() {
        let status =
            "Name:\tfleetcmd\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(status_field_bytes(status, "VmHWM"), Some(51200 * 1024));
        assert_eq!(status_field_bytes(status, "VmRSS"), Some(40960 * 1024));
        assert_eq!(status_field_bytes(status, "VmSwap"), None);
        // A field name that is a prefix of another does not match it.
        assert_eq!(status_field_bytes("VmRSSx:\t1 kB\n", "VmRSS"), None);
    }

    #[test]
    fn reads_cpu_ticks_even_with_spaces_in_the_name() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 130 0 0 20 0 9 0 1000 900000 10000";
        assert_eq!(stat_cpu(stat), Some(Duration::from_millis(3800)));
        assert_eq!(stat_cpu("garbage"), None);
    }

    #[test]
    fn our_own_process_is_readable() {
        let me = std::process::id();
        assert!(peak_rss(me).is_some_and(|b| b > 0));
        assert!(rss(me).is_some_and(|b| b > 0));
        assert!(cpu(me).is_some());
    }
}
