//! Checkpoint: validated options → a CRIU request (pure) → the engine.
//!
//! `options` turns CLI flags into typed options (runc's `criuOptions()`),
//! `request` builds the CRIU DUMP/PRE_DUMP request from them and from facts
//! about the container, `images` writes and checks our manifest beside
//! CRIU's images. The handler in `commands/checkpoint.rs` wires them to the
//! [`crate::criu`] engine.

pub mod images;
pub mod netns;
pub mod options;
pub mod request;
pub mod spec;
