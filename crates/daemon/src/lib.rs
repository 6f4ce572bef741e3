//! bangerd
