//! braid
