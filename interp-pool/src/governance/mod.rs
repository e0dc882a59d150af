//! What governs a running call: interrupts that belong to a call's activation (deadlines,
//! cancel tokens, the interruptible `time.sleep`, the escalation), and CPU clocks. Below the
//! owner thread: it never names an owner, a queue or a pool; the owner registers its
//! `InterruptTarget` and pushes activations and barriers.

pub(crate) mod cancel;
pub(crate) mod cpu;
pub(crate) mod escalate;
pub(crate) mod interrupt;
pub(crate) mod sleep;
