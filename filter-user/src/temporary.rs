//! Names for the temporary files that atomic writes (write, then rename over the target) go
//! through.

/// `.NAME.PID.N.tmp`: a temporary file no other writer uses, so two writes that overlap (an
/// engine replaced by a reload still saving, a last write at shutdown) never share one; each
/// renames its own complete file over the target.
pub fn unique_name(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.{}.{n}.tmp", std::process::id())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_differ_between_writes() {
        let (first, second) = (super::unique_name("x.json"), super::unique_name("x.json"));
        assert_ne!(first, second);
        assert!(
            first.starts_with(".x.json.") && first.ends_with(".tmp"),
            "{first}"
        );
    }
}
