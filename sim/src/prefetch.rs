//! A cache hint for the simulator's event loop, the simulator's one `unsafe` block (the
//! product crate forbids `unsafe`).
//!
//! At 10,000 simulated peers each event touches a node whose state left the cache long
//! ago, and most of an event's time is spent waiting on those lines one after another
//! (a mesh's partner list, then its entries, then its segments). The event queue knows
//! the next few events, so the loop asks for their lines while the current one runs
//! (see `sim::engine`). A prefetch only hints: it reads nothing into the program, cannot
//! fault, and is correct for any address, which is why it can be allowed here.

/// Asks the cache for the lines holding the `len` bytes at `p`. A no-op off x86-64.
pub(crate) fn prefetch<T: ?Sized>(p: *const T, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = p as *const u8 as usize;
        let end = start.saturating_add(len);
        let mut line = start & !63;
        while line < end {
            // SAFETY: `_mm_prefetch` is a hint that neither dereferences its argument nor
            // faults, whatever the address; SSE is part of the x86-64 baseline.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    line as *const i8,
                )
            };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}
