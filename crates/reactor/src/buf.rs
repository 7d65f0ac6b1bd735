//! A free list of I/O buffers shared by the connections of one loop.
//!
//! An idle connection holds no buffer: it takes one from the pool when it has bytes to
//! keep and gives it back when they are gone. Memory per idle connection stays small,
//! and steady-state traffic reuses the same few buffers instead of allocating. This
//! module must not grow without bound: at most `max_free` buffers are kept.

use bytes::BytesMut;

/// Buffers of one size, recycled.
#[derive(Debug)]
pub(crate) struct BufPool {
    free: Vec<BytesMut>,
    size: usize,
    max_free: usize,
}

impl BufPool {
    /// A pool of buffers of `size` bytes keeping at most `max_free` spare ones.
    pub(crate) fn new(size: usize, max_free: usize) -> BufPool {
        BufPool {
            // Reserved up front (32 bytes a slot): giving a buffer back never grows
            // the list, so it never allocates on the hot path.
            free: Vec::with_capacity(max_free.min(4096)),
            size: size.max(64),
            max_free,
        }
    }

    /// The size of the buffers this pool hands out.
    pub(crate) fn buffer_size(&self) -> usize {
        self.size
    }

    /// Number of spare buffers held.
    pub(crate) fn spare(&self) -> usize {
        self.free.len()
    }

    /// An empty buffer with at least `buffer_size` bytes of capacity.
    #[inline]
    pub(crate) fn get(&mut self) -> BytesMut {
        self.free
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(self.size))
    }

    /// Makes `buf` ready to be filled, if it holds nothing: one from the pool when it
    /// has no buffer, a whole one again when it was consumed to empty in pieces
    /// (`BytesMut::clear` keeps the consumed offset, so each fill would get less
    /// room). A buffer still holding bytes is left as it is.
    pub(crate) fn refill(&mut self, buf: &mut BytesMut) {
        if buf.capacity() == 0 {
            *buf = self.get();
        } else if buf.is_empty() && buf.capacity() < self.size {
            let old = std::mem::take(buf);
            self.put(old);
            *buf = self.get();
        }
    }

    /// Gives a buffer back. Its contents are discarded. Buffers that grew far beyond
    /// the pool's size (a large frame) are freed rather than kept.
    #[inline]
    pub(crate) fn put(&mut self, mut buf: BytesMut) {
        let cap = buf.capacity();
        // The hot path: a buffer with at least the pool's size of room from its
        // start of data (what `Conn` gives back after a complete write of a buffer
        // it never advanced).
        if cap >= self.size && cap <= 4 * self.size && self.free.len() < self.max_free {
            buf.clear();
            self.free.push(buf);
        } else {
            self.put_slow(buf);
        }
    }

    #[cold]
    fn put_slow(&mut self, mut buf: BytesMut) {
        if self.free.len() >= self.max_free {
            return;
        }
        buf.clear();
        // A buffer advanced part-way (or to its end) reports only the capacity after
        // its consumed offset but still owns its whole allocation: reclaim it,
        // without allocating. An empty `BytesMut::new()` has nothing to reclaim and
        // is dropped (freeing nothing); buffers that grew far beyond the pool's size
        // (a large frame) are freed rather than kept.
        if buf.try_reclaim(self.size) && buf.capacity() <= 4 * self.size {
            self.free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    #[test]
    fn recycles_and_bounds() {
        let mut p = BufPool::new(1024, 2);
        let mut a = p.get();
        a.extend_from_slice(&[1; 1000]);
        a.advance(900);
        let ptr_cap = a.capacity();
        assert!(ptr_cap < 1024);
        p.put(a);
        let b = p.get();
        assert!(b.is_empty());
        assert!(b.capacity() >= 1024);
        p.put(b);
        p.put(BytesMut::with_capacity(1024));
        p.put(BytesMut::with_capacity(1024));
        assert_eq!(p.spare(), 2);
        p.put(BytesMut::with_capacity(100_000));
        assert_eq!(p.spare(), 2);
    }

    #[test]
    fn fully_drained_buffers_are_recycled_and_empty_ones_ignored() {
        let mut p = BufPool::new(1024, 8);
        let mut a = p.get();
        a.extend_from_slice(&[7; 1024]);
        a.advance(1024); // written out completely: capacity() is now 0
        assert_eq!(a.capacity(), 0);
        p.put(a);
        assert_eq!(p.spare(), 1);
        assert!(p.get().capacity() >= 1024);
        p.put(BytesMut::new());
        assert_eq!(p.spare(), 0, "an unallocated buffer is not pooled");
        p.put(BytesMut::with_capacity(100_000));
        assert_eq!(p.spare(), 0, "an oversized buffer is not pooled");
    }
}
