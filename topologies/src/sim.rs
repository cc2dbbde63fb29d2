//! TODO: simulator (being written).
use crate::Plan;

/// One rank's buffers in a simulation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankData<T> {
    /// The send buffer.
    pub input: Vec<T>,
    /// The receive buffer.
    pub output: Vec<T>,
}

/// Why a simulation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// Placeholder.
    #[error("not implemented")]
    NotImplemented,
}

/// Runs all ranks' plans together.
pub fn simulate<T: Copy + Default>(
    _plans: &[Plan],
    _data: Vec<RankData<T>>,
    _op: impl Fn(T, T) -> T,
) -> Result<Vec<RankData<T>>, SimError> {
    Err(SimError::NotImplemented)
}
