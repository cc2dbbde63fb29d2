//! Element types, reduction ops and the reduction kernels.
//!
//! Kernels are plain loops over slices that the compiler vectorises (checked by
//! the `reduce` criterion bench against a memcpy of the same size). Integer
//! sums and products wrap, as in NCCL and MPI. Half-precision types compute in
//! f32 and round once per element.

use half::{bf16, f16};
use std::fmt;
use std::str::FromStr;

/// The element types braid moves and reduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 64-bit IEEE float.
    F64,
    /// 16-bit IEEE float (`half::f16`).
    F16,
    /// bfloat16 (`half::bf16`).
    BF16,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl DType {
    /// Every element type.
    pub const ALL: [DType; 10] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::U8,
        DType::I32,
        DType::U32,
        DType::I64,
        DType::U64,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// Whether the type is a floating-point type (the only ones with `Avg`).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }

    /// The lower-case name used by the bench (`f32`, `bf16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::I64 => "i64",
            DType::U64 => "u64",
        }
    }

    pub(crate) fn code(self) -> u8 {
        DType::ALL.iter().position(|d| *d == self).unwrap_or(0) as u8
    }

    pub(crate) fn from_code(code: u8) -> Option<DType> {
        DType::ALL.get(code as usize).copied()
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
                format!("unknown dtype '{s}'; valid dtypes: {}", names.join(", "))
            })
    }
}

/// How a reducing collective combines elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum (integers wrap on overflow).
    Sum,
    /// Product (integers wrap on overflow).
    Prod,
    /// Minimum. For floats a NaN operand is passed over unless both are NaN.
    Min,
    /// Maximum. For floats a NaN operand is passed over unless both are NaN.
    Max,
    /// Sum divided by the number of ranks; floating-point types only (an
    /// integer average would silently truncate, so it is refused with an
    /// error: use `Sum` and divide as your program needs).
    Avg,
}

impl ReduceOp {
    /// Every op.
    pub const ALL: [ReduceOp; 5] = [
        ReduceOp::Sum,
        ReduceOp::Prod,
        ReduceOp::Min,
        ReduceOp::Max,
        ReduceOp::Avg,
    ];

    /// The lower-case name used by the bench.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Prod => "prod",
            ReduceOp::Min => "min",
            ReduceOp::Max => "max",
            ReduceOp::Avg => "avg",
        }
    }

    pub(crate) fn code(self) -> u8 {
        ReduceOp::ALL.iter().position(|o| *o == self).unwrap_or(0) as u8 + 1
    }

    pub(crate) fn from_code(code: u8) -> Option<ReduceOp> {
        code.checked_sub(1)
            .and_then(|c| ReduceOp::ALL.get(c as usize).copied())
    }
}

impl fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ReduceOp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ReduceOp::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| format!("unknown op '{s}'; valid ops: sum, prod, min, max, avg"))
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A type braid can move and reduce: one of [`DType::ALL`].
///
/// Sealed: the reduction kernels are written for exactly these types.
pub trait Element: bytemuck::Pod + Send + Sync + PartialEq + fmt::Debug + sealed::Sealed {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// `dst[i] = dst[i] + src[i]` (wrapping for integers).
    fn sum_into(dst: &mut [Self], src: &[Self]);
    /// `dst[i] = dst[i] * src[i]` (wrapping for integers).
    fn prod_into(dst: &mut [Self], src: &[Self]);
    /// `dst[i] = min(dst[i], src[i])`.
    fn min_into(dst: &mut [Self], src: &[Self]);
    /// `dst[i] = max(dst[i], src[i])`.
    fn max_into(dst: &mut [Self], src: &[Self]);
    /// `dst[i] = dst[i] / n` for floats (used by `Avg`); integers never get here.
    fn divide(dst: &mut [Self], n: usize);
    /// The element that equals the small integer `v` (test and bench inputs).
    fn from_i64(v: i64) -> Self;
}

macro_rules! int_element {
    ($t:ty, $d:ident) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            fn sum_into(dst: &mut [Self], src: &[Self]) {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = d.wrapping_add(*s);
                }
            }
            fn prod_into(dst: &mut [Self], src: &[Self]) {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = d.wrapping_mul(*s);
                }
            }
            fn min_into(dst: &mut [Self], src: &[Self]) {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = (*d).min(*s);
                }
            }
            fn max_into(dst: &mut [Self], src: &[Self]) {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = (*d).max(*s);
                }
            }
            fn divide(_dst: &mut [Self], _n: usize) {}
            fn from_i64(v: i64) -> Self {
                v as $t
            }
        }
    };
}

int_element!(i8, I8);
int_element!(u8, U8);
int_element!(i32, I32);
int_element!(u32, U32);
int_element!(i64, I64);
int_element!(u64, U64);

macro_rules! float_element {
    ($t:ty, $d:ident) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            fn sum_into(dst: &mut [Self], src: &[Self]) {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += *s;
                }
            }
            fn prod_into(dst: &mut [Self], src: &[Self]) {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d *= *s;
                }
            }
            fn min_into(dst: &mut [Self], src: &[Self]) {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = d.min(*s);
                }
            }
            fn max_into(dst: &mut [Self], src: &[Self]) {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = d.max(*s);
                }
            }
            fn divide(dst: &mut [Self], n: usize) {
                let n = n as $t;
                for d in dst.iter_mut() {
                    *d /= n;
                }
            }
            fn from_i64(v: i64) -> Self {
                v as $t
            }
        }
    };
}

float_element!(f32, F32);
float_element!(f64, F64);

/// Half types widen to f32 in blocks so the f32 loop still vectorises.
macro_rules! half_element {
    ($t:ty, $d:ident) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            fn sum_into(dst: &mut [Self], src: &[Self]) {
                half_combine(dst, src, |a, b| a + b)
            }
            fn prod_into(dst: &mut [Self], src: &[Self]) {
                half_combine(dst, src, |a, b| a * b)
            }
            fn min_into(dst: &mut [Self], src: &[Self]) {
                half_combine(dst, src, f32::min)
            }
            fn max_into(dst: &mut [Self], src: &[Self]) {
                half_combine(dst, src, f32::max)
            }
            fn divide(dst: &mut [Self], n: usize) {
                let n = n as f32;
                for d in dst.iter_mut() {
                    *d = <$t>::from_f32(d.to_f32() / n);
                }
            }
            fn from_i64(v: i64) -> Self {
                <$t>::from_f32(v as f32)
            }
        }
    };
}

/// Block-wise widening to f32 and back. bf16 converts with plain bit
/// arithmetic (a loop the compiler vectorises); f16 uses `half`'s slice
/// conversions, which take the F16C instructions where the CPU has them.
trait HalfFloat: Copy {
    fn widen(src: &[Self], dst: &mut [f32]);
    fn narrow(src: &[f32], dst: &mut [Self]);
}
impl HalfFloat for f16 {
    #[inline(always)]
    fn widen(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
    #[inline(always)]
    fn narrow(src: &[f32], dst: &mut [Self]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
}
impl HalfFloat for bf16 {
    #[inline(always)]
    fn widen(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(s.to_bits()) << 16);
        }
    }
    #[inline(always)]
    fn narrow(src: &[f32], dst: &mut [Self]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = bf16::from_bits(bf16_bits_rounded(*s));
        }
    }
}

/// f32 to bf16 bits, rounding to nearest even; NaN stays a (quiet) NaN.
#[inline(always)]
fn bf16_bits_rounded(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((b >> 16) | 0x40) as u16;
    if b & 0x7fff_ffff > 0x7f80_0000 {
        quiet_nan
    } else {
        rounded
    }
}

fn half_combine<H: HalfFloat>(dst: &mut [H], src: &[H], f: impl Fn(f32, f32) -> f32 + Copy) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU supports AVX2 and F16C (checked just above),
            // the only requirement of calling a `target_feature` function.
            unsafe { half_combine_avx2(dst, src, f) };
            return;
        }
    }
    half_combine_portable(dst, src, f)
}

/// The same loop compiled for AVX2 + F16C, where the widening and narrowing
/// conversions vectorise (the x86-64 baseline lacks the packing instructions).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn half_combine_avx2<H: HalfFloat>(
    dst: &mut [H],
    src: &[H],
    f: impl Fn(f32, f32) -> f32 + Copy,
) {
    half_combine_portable(dst, src, f)
}

#[inline(always)]
fn half_combine_portable<H: HalfFloat>(
    dst: &mut [H],
    src: &[H],
    f: impl Fn(f32, f32) -> f32 + Copy,
) {
    const BLOCK: usize = 512;
    let mut a = [0f32; BLOCK];
    let mut b = [0f32; BLOCK];
    for (dc, sc) in dst.chunks_mut(BLOCK).zip(src.chunks(BLOCK)) {
        let n = dc.len();
        H::widen(dc, &mut a[..n]);
        H::widen(sc, &mut b[..n]);
        for (x, y) in a[..n].iter_mut().zip(&b[..n]) {
            *x = f(*x, *y);
        }
        H::narrow(&a[..n], dc);
    }
}

half_element!(f16, F16);
half_element!(bf16, BF16);

/// Reductions at least this large are split across cores with rayon when the
/// machine has at least [`PARALLEL_REDUCE_MIN_THREADS`] of them. On a 2-vCPU
/// host the split gained nothing (docs/performance.md): memory bandwidth, not
/// the core, limits a large reduction, and rank threads already fill the cores.
pub const PARALLEL_REDUCE_BYTES: usize = 8 << 20;

/// Fewest rayon threads for which a large reduction is split.
pub const PARALLEL_REDUCE_MIN_THREADS: usize = 4;

/// `dst[i] = op(dst[i], src[i])`. `Avg` folds as `Sum`; the division happens
/// once at the end of the collective. Large slices are split across cores.
pub fn reduce_into<T: Element>(op: ReduceOp, dst: &mut [T], src: &[T]) {
    debug_assert_eq!(dst.len(), src.len());
    let kernel: fn(&mut [T], &[T]) = match op {
        ReduceOp::Sum | ReduceOp::Avg => T::sum_into,
        ReduceOp::Prod => T::prod_into,
        ReduceOp::Min => T::min_into,
        ReduceOp::Max => T::max_into,
    };
    let bytes = std::mem::size_of_val(dst);
    if bytes >= PARALLEL_REDUCE_BYTES && rayon::current_num_threads() >= PARALLEL_REDUCE_MIN_THREADS
    {
        use rayon::prelude::*;
        let per_task = (PARALLEL_REDUCE_BYTES / 4 / std::mem::size_of::<T>()).max(1);
        dst.par_chunks_mut(per_task)
            .zip(src.par_chunks(per_task))
            .for_each(|(d, s)| kernel(d, s));
    } else {
        kernel(dst, src);
    }
}

/// Folds raw bytes received from a transport into `dst`. The bytes may not be
/// aligned for `T`; then they go through a small aligned bounce buffer.
pub(crate) fn reduce_bytes_into<T: Element>(op: ReduceOp, dst: &mut [T], src: &[u8]) {
    match bytemuck::try_cast_slice::<u8, T>(src) {
        Ok(src) => reduce_into(op, dst, src),
        Err(_) => {
            const BOUNCE: usize = 512;
            let mut bounce = [T::zeroed(); BOUNCE];
            let size = std::mem::size_of::<T>();
            for (d, s) in dst.chunks_mut(BOUNCE).zip(src.chunks(BOUNCE * size)) {
                let n = d.len();
                bytemuck::cast_slice_mut::<T, u8>(&mut bounce[..n]).copy_from_slice(s);
                reduce_into(op, d, &bounce[..n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: Element>() {
        let a: Vec<T> = (0..1000).map(|i| T::from_i64(i % 7 + 1)).collect();
        let b: Vec<T> = (0..1000).map(|i| T::from_i64(i % 5 + 1)).collect();
        for op in [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Min, ReduceOp::Max] {
            let mut d = a.clone();
            reduce_into(op, &mut d, &b);
            for i in 0..1000 {
                let (x, y) = (i % 7 + 1, i % 5 + 1);
                let want = match op {
                    ReduceOp::Sum => x + y,
                    ReduceOp::Prod => x * y,
                    ReduceOp::Min => x.min(y),
                    _ => x.max(y),
                };
                assert_eq!(d[i as usize], T::from_i64(want), "{op} {}", T::DTYPE);
            }
        }
    }

    #[test]
    fn kernels_are_exact_on_small_integers_for_every_dtype() {
        check::<f32>();
        check::<f64>();
        check::<f16>();
        check::<bf16>();
        check::<i8>();
        check::<u8>();
        check::<i32>();
        check::<u32>();
        check::<i64>();
        check::<u64>();
    }

    #[test]
    fn bf16_rounds_to_nearest_even_like_half() {
        let samples = [
            0.0f32,
            -0.0,
            1.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            std::f32::consts::PI,
            -2.5e-39,
            65504.0,
            3.4e38,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            1.0 + f32::EPSILON,
        ];
        for x in samples {
            assert_eq!(bf16_bits_rounded(x), bf16::from_f32(x).to_bits(), "{x}");
        }
        assert!(bf16::from_bits(bf16_bits_rounded(f32::NAN)).is_nan());
        for bits in (0u32..=u32::MAX).step_by(65_521) {
            let x = f32::from_bits(bits);
            if !x.is_nan() {
                assert_eq!(
                    bf16_bits_rounded(x),
                    bf16::from_f32(x).to_bits(),
                    "{bits:#x}"
                );
            }
        }
    }

    #[test]
    fn integer_sums_wrap() {
        let mut d = [i8::MAX, u8::MAX as i8];
        reduce_into(ReduceOp::Sum, &mut d, &[1, 1]);
        assert_eq!(d, [i8::MIN, 0]);
    }

    #[test]
    fn unaligned_bytes_reduce_like_aligned_ones() {
        let src: Vec<u64> = (0..2000).collect();
        let mut bytes = vec![0u8; 1];
        bytes.extend_from_slice(bytemuck::cast_slice(&src));
        let mut dst = vec![1u64; 2000];
        reduce_bytes_into(ReduceOp::Sum, &mut dst, &bytes[1..]);
        assert!(dst.iter().enumerate().all(|(i, v)| *v == i as u64 + 1));
    }

    #[test]
    fn large_reductions_split_across_cores_stay_exact() {
        let n = PARALLEL_REDUCE_BYTES / 4 + 12345;
        let mut d: Vec<i32> = (0..n as i32).collect();
        let s: Vec<i32> = vec![3; n];
        // A pool of enough threads takes the split path even on a 2-core host.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(PARALLEL_REDUCE_MIN_THREADS)
            .build()
            .unwrap();
        pool.install(|| {
            assert!(rayon::current_num_threads() >= PARALLEL_REDUCE_MIN_THREADS);
            reduce_into(ReduceOp::Sum, &mut d, &s);
        });
        assert!(d.iter().enumerate().all(|(i, v)| *v == i as i32 + 3));
    }

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
            assert_eq!(DType::from_code(d.code()), Some(d));
        }
        for o in ReduceOp::ALL {
            assert_eq!(o.name().parse::<ReduceOp>().unwrap(), o);
            assert_eq!(ReduceOp::from_code(o.code()), Some(o));
        }
        assert!("f128".parse::<DType>().unwrap_err().contains("bf16"));
    }
}
