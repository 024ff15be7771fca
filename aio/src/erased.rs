//! Type-erased storage for the value a slot keeps alive until its request
//! completes (the caller's buffers), without a heap allocation for the
//! common buffer types.

use std::mem::{MaybeUninit, align_of, size_of};
use std::ptr;

const WORDS: usize = 4;
type Storage = [MaybeUninit<usize>; WORDS];

/// Whether `T` is stored inline; larger values are stored as a `Box<T>`.
const fn fits<T>() -> bool {
    size_of::<T>() <= size_of::<Storage>() && align_of::<T>() <= align_of::<Storage>()
}

/// Holds one value of a type known only to whoever put it there.
///
/// Values of up to four words (a `Vec<u8>`, a `Box<[u8]>`, an
/// [`AlignedBuf`](crate::AlignedBuf), a `Vec` of buffers) live inline;
/// larger ones in a box. Dropping an `Erased` drops the value.
pub(crate) struct Erased {
    storage: Storage,
    /// Drops the stored value in place; `None` when empty.
    drop_fn: Option<unsafe fn(*mut Storage)>,
}

/// # Safety
/// `p` must hold an initialised `T` that is not used afterwards.
unsafe fn drop_as<T>(p: *mut Storage) {
    // SAFETY: forwarded from the caller.
    unsafe { ptr::drop_in_place(p.cast::<T>()) }
}

impl Erased {
    pub(crate) const fn empty() -> Erased {
        Erased {
            storage: [MaybeUninit::uninit(); WORDS],
            drop_fn: None,
        }
    }

    /// Stores `value`, dropping whatever was there before.
    pub(crate) fn put<T>(&mut self, value: T) {
        self.clear();
        if fits::<T>() {
            // SAFETY: the storage is large and aligned enough for T (checked
            // by `fits`) and holds nothing live.
            unsafe { ptr::write(self.storage.as_mut_ptr().cast::<T>(), value) };
            self.drop_fn = Some(drop_as::<T>);
        } else {
            // SAFETY: a Box is one pointer, which always fits.
            unsafe { ptr::write(self.storage.as_mut_ptr().cast::<Box<T>>(), Box::new(value)) };
            self.drop_fn = Some(drop_as::<Box<T>>);
        }
    }

    /// Moves the value out.
    ///
    /// # Safety
    /// The value was stored by `put::<T>` with this very `T`, and not taken
    /// or cleared since.
    pub(crate) unsafe fn take<T>(&mut self) -> T {
        debug_assert!(self.drop_fn.is_some(), "take from an empty Erased");
        self.drop_fn = None;
        if fits::<T>() {
            // SAFETY: the caller guarantees a live T is stored inline.
            unsafe { ptr::read(self.storage.as_ptr().cast::<T>()) }
        } else {
            // SAFETY: the caller guarantees a live Box<T> is stored.
            *unsafe { ptr::read(self.storage.as_ptr().cast::<Box<T>>()) }
        }
    }

    /// Whether no value is stored.
    pub(crate) fn is_empty(&self) -> bool {
        self.drop_fn.is_none()
    }

    /// Drops the stored value, if any.
    pub(crate) fn clear(&mut self) {
        if let Some(drop_fn) = self.drop_fn.take() {
            // SAFETY: `drop_fn` was set by `put` for the type stored here,
            // and is cleared before the call so a panicking Drop cannot
            // cause a second drop.
            unsafe { drop_fn(&mut self.storage) }
        }
    }
}

impl Drop for Erased {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn inline_and_boxed_values_round_trip_and_drop() {
        let rc = Rc::new(());
        let mut e = Erased::empty();
        e.put(vec![rc.clone()]);
        assert_eq!(Rc::strong_count(&rc), 2);
        // SAFETY: a Vec<Rc<()>> was just put.
        let v: Vec<Rc<()>> = unsafe { e.take() };
        drop(v);
        assert_eq!(Rc::strong_count(&rc), 1);

        let big = [rc.clone(), rc.clone(), rc.clone(), rc.clone(), rc.clone()];
        e.put(big);
        assert_eq!(Rc::strong_count(&rc), 6);
        drop(e);
        assert_eq!(Rc::strong_count(&rc), 1);
    }
}
