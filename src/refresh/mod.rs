//! One target: its schedule, paging through its list, and the bounds on what it
//! publishes.
//!
//! - [`schedule`]: every target on its own ticker; start, keep and stop them.
//! - [`paging`]: one pass through a list, bounded whatever the upstream says.
//! - [`limits`]: cardinality bounds applied to a pass's result (pure).

pub mod limits;
pub mod paging;
pub mod schedule;

pub use limits::Limits;
pub use schedule::{Liveness, Scheduler};
