//! Matrix products through the `gemm` crate (the one burn-flex uses) on
//! strided views, written into buffers the fused ops own: no zero-fill, no
//! aligning copy, no transposed copies.

/// A matrix view: element (i, j) at `data[i * row + j * col]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    data: &'a [f32],
    row: isize,
    col: isize,
}

impl<'a> View<'a> {
    /// Rows `row` apart, columns adjacent: a row-major matrix, or a block of
    /// columns of a wider one.
    pub fn rows(data: &'a [f32], row: usize) -> Self {
        View {
            data,
            row: row as isize,
            col: 1,
        }
    }

    /// The transpose of [`View::rows`].
    pub fn transposed(data: &'a [f32], row: usize) -> Self {
        View {
            data,
            row: 1,
            col: row as isize,
        }
    }

    fn covers(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1) as isize * self.row + (cols - 1) as isize * self.col;
        (last as usize) < self.data.len()
    }
}

/// Where a product goes: `ptr[i * row + j]`.
#[derive(Clone, Copy)]
pub struct Dst {
    pub ptr: *mut f32,
    pub row: usize,
}

/// How the product meets what the destination holds.
#[derive(Clone, Copy, PartialEq)]
pub enum Write {
    Overwrite,
    Accumulate,
}

/// Below this many multiply-adds one thread is faster than splitting (the
/// threshold burn-flex uses too).
const PARALLEL_FROM: usize = 192 * 192 * 192;

/// `dst (= or +=) factor · lhs [m, k] · rhs [k, n]` on the calling thread.
///
/// # Safety
/// `dst` must be valid for writes (and, with `Accumulate`, reads) at every
/// `i * row + j` for i < m, j < n, and no other thread may touch those.
#[allow(clippy::too_many_arguments)] // gemm's own signature has nineteen
pub unsafe fn product_into(dst: Dst, m: usize, n: usize, k: usize, lhs: View, rhs: View, factor: f32, write: Write) {
    unsafe { gemm_call(dst, m, n, k, lhs, rhs, factor, write, gemm::Parallelism::None) }
}

/// `lhs [m, k] · rhs [k, n]` into a new row-major `[m, n]` buffer, over the
/// rayon pool when the product is large.
pub fn product(m: usize, n: usize, k: usize, lhs: View, rhs: View) -> Vec<f32> {
    let mut out = Vec::<f32>::with_capacity(m * n);
    let parallelism = if m * n * k >= PARALLEL_FROM {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let dst = Dst {
        ptr: out.as_mut_ptr(),
        row: n,
    };
    // SAFETY: `out` has room for m·n values and nobody else sees it; gemm
    // overwrites every one of them, so they are initialised before `set_len`.
    unsafe {
        gemm_call(dst, m, n, k, lhs, rhs, 1.0, Write::Overwrite, parallelism);
        out.set_len(m * n);
    }
    out
}

#[allow(clippy::too_many_arguments)]
unsafe fn gemm_call(
    dst: Dst,
    m: usize,
    n: usize,
    k: usize,
    lhs: View,
    rhs: View,
    factor: f32,
    write: Write,
    parallelism: gemm::Parallelism,
) {
    assert!(
        lhs.covers(m, k) && rhs.covers(k, n),
        "matrix views within their buffers"
    );
    let accumulate = write == Write::Accumulate;
    // SAFETY: the views lie within their slices (checked above); the caller
    // vouches for `dst`. With `read_dst = false` gemm never reads `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            1,
            dst.row as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col,
            lhs.row,
            rhs.data.as_ptr(),
            rhs.col,
            rhs.row,
            1.0f32,
            factor,
            false,
            false,
            false,
            parallelism,
        );
    }
}
