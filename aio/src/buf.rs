//! Buffers the kernel may read or write after the call that submitted them
//! has returned.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use aio_abi::IoVec;

/// A buffer the kernel may read from (the source of a write).
///
/// # Safety
///
/// Implementors guarantee that, as long as the value is not accessed
/// through `&mut` and not dropped:
///
/// - [`stable_ptr`](IoBuf::stable_ptr) points at [`bytes_len`](IoBuf::bytes_len)
///   initialised bytes that stay allocated, **at the same address even when
///   the value itself is moved** (so the bytes live on the heap, in static
///   memory, or behind a borrow, never inline in the value);
/// - those bytes are not modified (no interior mutability);
/// - repeated calls return the same pointer and length.
pub unsafe trait IoBuf {
    /// Start of the bytes.
    fn stable_ptr(&self) -> *const u8;
    /// Number of bytes.
    fn bytes_len(&self) -> usize;
}

/// A buffer the kernel may write into (the destination of a read).
///
/// Reads fill the first [`bytes_len`](IoBuf::bytes_len) bytes: for a `Vec<u8>`
/// that is its length, not its capacity.
///
/// # Safety
///
/// As [`IoBuf`], and in addition [`stable_mut_ptr`](IoBufMut::stable_mut_ptr)
/// is valid for writes of `bytes_len()` bytes that nothing else reads or
/// writes while the value is not touched; any byte values are valid.
pub unsafe trait IoBufMut: IoBuf {
    /// Start of the bytes, for writing.
    fn stable_mut_ptr(&mut self) -> *mut u8;
}

/// A list of buffers for a gather write ([`WriteV`](crate::WriteV)).
///
/// # Safety
///
/// Every segment appended by [`iovecs`](IoBufs::iovecs) satisfies the
/// contract of [`IoBuf`] for as long as the collection is not touched.
pub unsafe trait IoBufs {
    /// Appends one [`IoVec`] per segment to `out`.
    fn iovecs(&self, out: &mut Vec<IoVec>);
}

/// A list of buffers for a scatter read ([`ReadV`](crate::ReadV)).
///
/// # Safety
///
/// Every segment appended by [`iovecs_mut`](IoBufsMut::iovecs_mut) satisfies
/// the contract of [`IoBufMut`] for as long as the collection is not
/// touched, and no two segments overlap.
pub unsafe trait IoBufsMut {
    /// Appends one [`IoVec`] per segment to `out`.
    fn iovecs_mut(&mut self, out: &mut Vec<IoVec>);
}

fn iovec(ptr: *const u8, len: usize) -> IoVec {
    IoVec {
        iov_base: ptr as u64,
        iov_len: len as u64,
    }
}

// SAFETY: a Vec's elements live on the heap and do not move with the Vec;
// they only change through `&mut Vec`.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_len(&self) -> usize {
        self.len()
    }
}

// SAFETY: as for IoBuf; the first `len` bytes are initialised u8s.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
}

// SAFETY: a boxed slice lives on the heap and only changes through `&mut`.
unsafe impl IoBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_len(&self) -> usize {
        self.len()
    }
}

// SAFETY: as for IoBuf.
unsafe impl IoBufMut for Box<[u8]> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
}

// SAFETY: the borrow keeps the bytes alive and immutable for 'a, and moving
// the reference does not move them.
unsafe impl IoBuf for &[u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_len(&self) -> usize {
        self.len()
    }
}

// SAFETY: the exclusive borrow keeps the bytes alive and unaliased for 'a.
unsafe impl IoBuf for &mut [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_len(&self) -> usize {
        self.len()
    }
}

// SAFETY: as above; the borrow is exclusive.
unsafe impl IoBufMut for &mut [u8] {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
}

// SAFETY: as for `&[u8]`: an array behind a shared borrow.
unsafe impl<const N: usize> IoBuf for &[u8; N] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_len(&self) -> usize {
        N
    }
}

// SAFETY: as for `&mut [u8]`: an array behind an exclusive borrow.
unsafe impl<const N: usize> IoBuf for &mut [u8; N] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_len(&self) -> usize {
        N
    }
}

// SAFETY: as above; the borrow is exclusive.
unsafe impl<const N: usize> IoBufMut for &mut [u8; N] {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
}

/// The one-segment case of a vectored operation: [`Read`](crate::Read) is a
/// [`ReadV`](crate::ReadV) of one `Single`.
#[derive(Debug)]
pub struct Single<B>(pub B);

// SAFETY: one segment, straight from the IoBuf contract.
unsafe impl<B: IoBuf> IoBufs for Single<B> {
    fn iovecs(&self, out: &mut Vec<IoVec>) {
        out.push(iovec(self.0.stable_ptr(), self.0.bytes_len()));
    }
}

// SAFETY: one segment, straight from the IoBufMut contract.
unsafe impl<B: IoBufMut> IoBufsMut for Single<B> {
    fn iovecs_mut(&mut self, out: &mut Vec<IoVec>) {
        let len = self.0.bytes_len();
        out.push(iovec(self.0.stable_mut_ptr(), len));
    }
}

macro_rules! collections {
    ($($ty:ty),*) => {$(
        // SAFETY: each element is an IoBuf whose bytes do not move with the
        // collection; the collection is only changed through `&mut`.
        unsafe impl<B: IoBuf> IoBufs for $ty {
            fn iovecs(&self, out: &mut Vec<IoVec>) {
                out.extend(self.iter().map(|b| iovec(b.stable_ptr(), b.bytes_len())));
            }
        }

        // SAFETY: as above; distinct owned (or exclusively borrowed)
        // elements cannot overlap.
        unsafe impl<B: IoBufMut> IoBufsMut for $ty {
            fn iovecs_mut(&mut self, out: &mut Vec<IoVec>) {
                out.extend(self.iter_mut().map(|b| {
                    let len = b.bytes_len();
                    iovec(b.stable_mut_ptr(), len)
                }));
            }
        }
    )*};
}

collections!(Vec<B>, Box<[B]>);

// SAFETY: as for Vec<B>: the elements' bytes do not move with the array.
unsafe impl<B: IoBuf, const N: usize> IoBufs for [B; N] {
    fn iovecs(&self, out: &mut Vec<IoVec>) {
        out.extend(self.iter().map(|b| iovec(b.stable_ptr(), b.bytes_len())));
    }
}

// SAFETY: as for Vec<B>.
unsafe impl<B: IoBufMut, const N: usize> IoBufsMut for [B; N] {
    fn iovecs_mut(&mut self, out: &mut Vec<IoVec>) {
        out.extend(self.iter_mut().map(|b| {
            let len = b.bytes_len();
            iovec(b.stable_mut_ptr(), len)
        }));
    }
}

/// A zero-initialised heap buffer whose start is aligned to `align` bytes,
/// as `O_DIRECT` requires (see [`dio_alignment`](crate::dio_alignment)).
///
/// ```
/// use aio::AlignedBuf;
///
/// let mut buf = AlignedBuf::new(8192, 4096);
/// assert_eq!(buf.as_ptr() as usize % 4096, 0);
/// buf[..5].copy_from_slice(b"hello");
/// assert_eq!(&buf[..5], b"hello");
/// assert_eq!((buf.len(), buf.align()), (8192, 4096));
/// ```
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    align: usize,
}

// SAFETY: the buffer is uniquely owned plain bytes.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zero bytes starting at a multiple of `align`.
    ///
    /// # Panics
    /// If `align` is not a power of two, or `len` rounded up to `align`
    /// overflows `isize`. Aborts if the allocation fails.
    pub fn new(len: usize, align: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(len, align)
            .expect("AlignedBuf: align must be a power of two and len fit in isize");
        let ptr = if len == 0 {
            // A dangling but aligned pointer: valid for zero-length access.
            NonNull::new(std::ptr::without_provenance_mut(align)).expect("align is nonzero")
        } else {
            // SAFETY: the layout has a nonzero size.
            let p = unsafe { alloc::alloc_zeroed(layout) };
            NonNull::new(p).unwrap_or_else(|| alloc::handle_alloc_error(layout))
        };
        AlignedBuf { ptr, len, align }
    }

    /// A copy of `data` in a buffer aligned to `align`.
    ///
    /// # Panics
    /// As [`AlignedBuf::new`].
    pub fn from_slice(data: &[u8], align: usize) -> AlignedBuf {
        let mut buf = AlignedBuf::new(data.len(), align);
        buf.copy_from_slice(data);
        buf
    }

    /// The alignment of the start.
    pub fn align(&self) -> usize {
        self.align
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: allocated in `new` with exactly this layout.
            unsafe {
                alloc::dealloc(
                    self.ptr.as_ptr(),
                    Layout::from_size_align_unchecked(self.len, self.align),
                )
            }
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes owned by self (or an aligned dangling
        // pointer for length 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> AlignedBuf {
        AlignedBuf::from_slice(self, self.align)
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("align", &self.align)
            .finish()
    }
}

// SAFETY: the bytes are a separate heap allocation owned by the value; they
// only change through `&mut`.
unsafe impl IoBuf for AlignedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    fn bytes_len(&self) -> usize {
        self.len
    }
}

// SAFETY: as above; zero-initialised, so every byte is initialised.
unsafe impl IoBufMut for AlignedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_alignment_and_zero_len() {
        for align in [1, 512, 4096, 65536] {
            let b = AlignedBuf::new(100, align);
            assert_eq!(b.as_ptr() as usize % align, 0);
            assert!(b.iter().all(|&x| x == 0));
        }
        let z = AlignedBuf::new(0, 4096);
        assert_eq!(z.len(), 0);
        assert_eq!(z.stable_ptr() as usize % 4096, 0);
    }

    #[test]
    fn collections_list_their_segments() {
        let bufs = vec![vec![1u8; 3], vec![2u8; 5]];
        let mut out = Vec::new();
        bufs.iovecs(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].iov_base, bufs[0].as_ptr() as u64);
        assert_eq!(out[1].iov_len, 5);
    }
}
