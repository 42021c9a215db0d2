//! Gantry's proxy engine.
//!
//! - [`router`]: Kong's route matching and priorities, compiled off the request path.
//! - [`uri`]: request path normalisation and Kong's upstream path rules.

pub mod router;
pub mod uri;
