//! Segments being assembled from parts: which are still wanted, the bound on how many at
//! once, and what a part's first frame may start.

use std::time::Duration;

/// Segments behind the newest held still worth receiving.
pub const KEEP_BEHIND: u64 = 64;

/// Most segments assembled at once; beyond it the oldest is given up first.
pub const MAX_ASSEMBLIES: usize = 16;

/// Longest a part's reply may go silent (no byte after its header or after the last one)
/// before the part is given up and asked elsewhere: a supplier that
/// vanished is otherwise noticed only at the QUIC idle timeout, while an honest gap is one
/// piece's time on the supplier's uplink (BENCHMARKS.md).
pub const PIECE_SILENCE: Duration = Duration::from_secs(1);

/// Longest a part's reply from a partner on one of our own networks (our site) may go
/// silent. Such a partner relays a part it is itself fetching across the WAN our site
/// shares, a piece at a time: on a congested WAN a piece takes longer than
/// [`PIECE_SILENCE`] to reach it, and giving up on it would fetch a second copy across the
/// same congested link (lab runs showed whole sites collapsing that way). A partner whose
/// own upstream goes silent fails our transfer at once, so this waits only on slowness.
pub const LAN_PIECE_SILENCE: Duration = Duration::from_secs(3);

/// The segments a node is assembling, each with what its driver keeps for it (`net`: the
/// verified pieces; the simulator: the transfers bringing them). At most
/// [`MAX_ASSEMBLIES`], so a scan is cheaper than a map.
#[derive(Debug)]
pub struct Assemblies<T> {
    items: Vec<(u64, T)>,
}

impl<T> Default for Assemblies<T> {
    fn default() -> Self {
        Assemblies { items: Vec::new() }
    }
}

/// What a part's first frame may do.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstFrame {
    /// Write into the segment's assembly; `created` when this frame started it (its
    /// header just verified), so the segment's empty parts are held as of now.
    Take {
        /// This frame's header started the assembly.
        created: bool,
    },
    /// The segment is held, too old, or given up to make room: stop the transfer.
    Unwanted,
    /// A reply without a header, for a segment whose assembly is gone since it was asked
    /// for (completed or given up): the transfer fails and the mesh asks again.
    Lost,
    /// A push without a header: only a forger sends one (see [`crate::node::Forgery`]).
    PushWithoutHeader,
}

impl<T> Assemblies<T> {
    /// Whether segment `number` is still worth receiving: not held, and not more than
    /// [`KEEP_BEHIND`] behind the newest held.
    pub fn wanted(number: u64, held: bool, newest_held: Option<u64>) -> bool {
        !held && newest_held.is_none_or(|n| number.saturating_add(KEEP_BEHIND) >= n)
    }

    /// The assembly of segment `number`.
    pub fn get(&self, number: u64) -> Option<&T> {
        self.items
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, t)| t)
    }

    /// The assembly of segment `number`, to change.
    pub fn get_mut(&mut self, number: u64) -> Option<&mut T> {
        self.items
            .iter_mut()
            .find(|(n, _)| *n == number)
            .map(|(_, t)| t)
    }

    /// Whether segment `number` is being assembled.
    pub fn contains(&self, number: u64) -> bool {
        self.get(number).is_some()
    }

    /// A part's first frame for segment `number` landed (`wanted` from
    /// [`Assemblies::wanted`]; `pushed` when unasked). `make` is there when the frame carried
    /// the signed header, already verified: it starts the assembly if none exists, and the
    /// oldest beyond [`MAX_ASSEMBLIES`] is given up.
    pub fn first_frame(
        &mut self,
        number: u64,
        wanted: bool,
        pushed: bool,
        make: Option<impl FnOnce() -> T>,
    ) -> FirstFrame {
        if !wanted {
            return FirstFrame::Unwanted;
        }
        if self.contains(number) {
            return FirstFrame::Take { created: false };
        }
        match (make, pushed) {
            (Some(make), _) => {
                self.items.push((number, make()));
                while self.items.len() > MAX_ASSEMBLIES {
                    let oldest = self
                        .items
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, (n, _))| *n)
                        .map(|(i, _)| i);
                    if let Some(i) = oldest {
                        self.items.swap_remove(i);
                    }
                }
                if self.contains(number) {
                    FirstFrame::Take { created: true }
                } else {
                    // Older than every segment in hand: given up at once.
                    FirstFrame::Unwanted
                }
            }
            (None, true) => FirstFrame::PushWithoutHeader,
            (None, false) => FirstFrame::Lost,
        }
    }

    /// Ends segment `number`'s assembly (it is whole, or failed); what it held.
    pub fn remove(&mut self, number: u64) -> Option<T> {
        let i = self.items.iter().position(|(n, _)| *n == number)?;
        Some(self.items.swap_remove(i).1)
    }

    /// Gives up the assemblies too far behind `newest_held` to be wanted any more.
    pub fn keep_window(&mut self, newest_held: u64) {
        self.items
            .retain(|(n, _)| n.saturating_add(KEEP_BEHIND) >= newest_held);
    }

    /// Segments being assembled.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Nothing is being assembled.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The assemblies, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.items.iter().map(|(n, t)| (*n, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first frame without a header.
    const NO_HEADER: Option<fn() -> u32> = None;

    #[test]
    fn held_and_too_old_segments_are_unwanted() {
        assert!(Assemblies::<()>::wanted(10, false, None));
        assert!(!Assemblies::<()>::wanted(10, true, None));
        assert!(Assemblies::<()>::wanted(10, false, Some(10 + KEEP_BEHIND)));
        assert!(!Assemblies::<()>::wanted(10, false, Some(11 + KEEP_BEHIND)));
    }

    #[test]
    fn a_header_starts_an_assembly_and_later_frames_join_it() {
        let mut a = Assemblies::default();
        assert_eq!(a.first_frame(5, true, false, NO_HEADER), FirstFrame::Lost);
        assert_eq!(
            a.first_frame(5, true, true, NO_HEADER),
            FirstFrame::PushWithoutHeader
        );
        assert_eq!(
            a.first_frame(5, true, false, Some(|| 7)),
            FirstFrame::Take { created: true }
        );
        assert_eq!(
            a.first_frame(5, true, false, NO_HEADER),
            FirstFrame::Take { created: false }
        );
        assert_eq!(a.get(5), Some(&7));
        assert_eq!(
            a.first_frame(5, false, false, Some(|| 0)),
            FirstFrame::Unwanted
        );
        assert_eq!(a.remove(5), Some(7));
        assert!(a.is_empty());
    }

    #[test]
    fn beyond_the_bound_the_oldest_goes_first() {
        let mut a = Assemblies::default();
        for n in 10..10 + MAX_ASSEMBLIES as u64 {
            a.first_frame(n, true, false, Some(|| ()));
        }
        assert_eq!(a.len(), MAX_ASSEMBLIES);
        // A newer one pushes out the oldest.
        let newer = 10 + MAX_ASSEMBLIES as u64;
        assert_eq!(
            a.first_frame(newer, true, false, Some(|| ())),
            FirstFrame::Take { created: true }
        );
        assert!(!a.contains(10) && a.contains(newer));
        // One older than all of them is given up at once.
        assert_eq!(
            a.first_frame(3, true, false, Some(|| ())),
            FirstFrame::Unwanted
        );
        assert_eq!(a.len(), MAX_ASSEMBLIES);
    }

    #[test]
    fn the_window_gives_up_what_fell_behind() {
        let mut a = Assemblies::default();
        a.first_frame(1, true, false, Some(|| ()));
        a.first_frame(100, true, false, Some(|| ()));
        a.keep_window(100);
        assert!(!a.contains(1) && a.contains(100));
    }
}
