//! banger CLI
