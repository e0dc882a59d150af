//! What a main-pool seat serves besides its own mailbox: the main pool's lanes, through the
//! [`Lanes`] interface the pool implements (`dispatch/main_pool.rs`). The serve loop knows
//! only this interface, so the pool's policy (which lane a seat may take, whom a post wakes)
//! lives in the pool, and this layer never names it.

use std::sync::Arc;

use super::job::Job;

/// The main pool as its seats see it.
pub(crate) trait Lanes: Sync {
    /// The next queued call seat `seat` may take, with the hold it runs under.
    fn take(&self, seat: usize) -> Option<(Job, Hold)>;
    /// Whether any lane has a call seat `seat` may take (the park re-check).
    fn has_work(&self, seat: usize) -> bool;
    /// Seat `seat` is between jobs and not parked (`true`: it will see a queued call
    /// without a wake-up), or no longer (`false`).
    fn set_looking(&self, seat: usize, on: bool);
    /// A seat stopped looking without parking (it took a call, or its nested wait is
    /// over): wake seats for calls that posters who saw it looking left to it.
    fn hand_off(&self);
}

/// A lane whose [`Hold`]s can be released.
pub(crate) trait Release: Send + Sync {
    /// Seat `seat` lets go of one hold on the lane.
    fn release(&self, seat: usize);
}

/// Seat `seat` holding a lane: while it lives the seat counts against the lane's limit.
pub(crate) struct Hold {
    lane: Arc<dyn Release>,
    seat: usize,
}

impl Hold {
    /// A hold the lane has already counted (see the pool's `acquire`).
    pub(crate) fn new(lane: Arc<dyn Release>, seat: usize) -> Self {
        Self { lane, seat }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.lane.release(self.seat);
    }
}

/// A main-pool owner thread's place in the pool.
#[derive(Clone, Copy)]
pub(crate) struct Seat {
    pub(crate) index: usize,
    pub(crate) lanes: &'static dyn Lanes,
}

impl std::fmt::Debug for Seat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seat").field("index", &self.index).finish()
    }
}

/// Seat's "looking" flag, set while it is between jobs and not parked; cleared when dropped.
pub(crate) struct Looking(Seat);

impl Looking {
    pub(crate) fn new(seat: Seat) -> Self {
        Self(seat)
    }

    pub(crate) fn set(&self, on: bool) {
        self.0.lanes.set_looking(self.0.index, on);
    }
}

impl Drop for Looking {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// A main lane as a caller's thread that holds it directly sees it (`held.rs`): while it
/// waits on another interpreter it serves the lane's queued calls (they may be calls that
/// only a holder may take, the lane being at its limit), under the hold it has.
pub(crate) trait HeldLane: Send + Sync {
    /// A queued call of the lane, to run under the caller's hold (the lane counts it).
    fn take_held(&self) -> Option<super::job::Job>;
    /// Whether the lane has a queued call.
    fn has_queued(&self) -> bool;
    /// Its waiting holders, whom posts to the lane wake.
    fn holders(&self) -> &super::holders::WaitingHolders;
}
