//! The one resident-memory reader: load metrics, the benches and the tests use it. Plain
//! `std`, no crate paths: the reference bench (`benches/reference.rs`, which must not link
//! this crate, see Cargo.toml) includes this file with `#[path]`.

/// Resident set size of this process in bytes: the `VmRSS` line of `/proc/self/status`,
/// which the kernel gives in kB (so no page size is assumed). `None` where that file does
/// not exist (not Linux) or has no such line.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

/// `VmRSS:     1234 kB` → 1234 × 1024.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut words = line.split_whitespace();
    let kb: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => kb.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    // `super::` paths, no `use`: benches include this file, and their check builds strip
    // `#[test]` fns, which would leave an import unused.

    #[test]
    fn vm_rss_is_read_in_kb() {
        let status = "Name:\tx\nVmHWM:\t    9000 kB\nVmRSS:\t    1234 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(super::parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(super::parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(super::parse_vm_rss("VmRSS:\t12 pages\n"), None);
        if cfg!(target_os = "linux") {
            assert!(
                super::rss_bytes().is_some_and(|b| b > 1 << 20),
                "this process uses more than 1 MiB"
            );
        }
    }
}
