//! Test-only fault points: named places in prepare, release and the node operations where
//! a test can stop the process dead (as `kill -9` would) or run a hook (make a device
//! vanish mid-operation).
//!
//! Compiled only into this crate's own test binary (`cfg(test)`): in every other build
//! [`point`] is an empty inline function, so no environment variable or call can trigger a
//! fault in production.

/// The environment variable naming the fault point at which to abort.
#[cfg(test)]
pub(crate) const ABORT_AT: &str = "PLUGBOARD_HOSTDEV_TEST_ABORT_AT";

#[cfg(test)]
type Hook = Box<dyn FnMut(&str)>;

#[cfg(test)]
thread_local! {
    static HOOK: std::cell::RefCell<Option<Hook>> = const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
static HITS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Marks fault point `name`. With `ABORT_AT=name` the process aborts at the first hit,
/// with `ABORT_AT=name#n` at the n-th.
#[cfg(test)]
pub(crate) fn point(name: &str) {
    if let Ok(at) = std::env::var(ABORT_AT) {
        let (at, nth) = at
            .split_once('#')
            .map_or((at.as_str(), 1), |(a, n)| (a, n.parse().unwrap_or(1)));
        if at == name {
            let hit = HITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if hit == nth {
                // Like kill -9: no destructors, no flushing, no unwinding.
                std::process::abort();
            }
        }
    }
    HOOK.with(|hook| {
        if let Some(f) = hook.borrow_mut().as_mut() {
            f(name);
        }
    });
}

/// Marks fault point `name` (no-op outside this crate's tests).
#[cfg(not(test))]
#[inline(always)]
pub(crate) fn point(_name: &str) {}

/// Runs `f` at every fault point on this thread until the guard drops.
#[cfg(test)]
pub(crate) fn set_hook(f: impl FnMut(&str) + 'static) -> HookGuard {
    HOOK.with(|hook| *hook.borrow_mut() = Some(Box::new(f)));
    HookGuard
}

/// Removes the hook on drop.
#[cfg(test)]
pub(crate) struct HookGuard;

#[cfg(test)]
impl Drop for HookGuard {
    fn drop(&mut self) {
        HOOK.with(|hook| *hook.borrow_mut() = None);
    }
}
