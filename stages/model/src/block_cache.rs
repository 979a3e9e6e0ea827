//! A global allocator that keeps freed large blocks for the next request of
//! the same size class.
//!
//! Why: a training step allocates and frees the same large tensors (logits,
//! attention scores, their gradients) every step. The system allocator
//! returns blocks above its mmap threshold to the kernel at once, so each
//! step page-faults and zeroes memory it held a moment before; on the model
//! bench's CPU config that was a tenth of a training step and a third of a
//! forward pass. Blocks under [`MIN_BLOCK`] go straight to the system
//! allocator, so small-object heavy stages (tokenizing) are unaffected.
//!
//! The binary installs it with `#[global_allocator]`; the cache holds at most
//! [`SLOTS`] blocks and `limit` bytes, evicting the block freed longest ago.
//!
//! Shapes that vary from pass to pass (an exam's prompts of every length,
//! documents shorter than the window) ask for a new size class almost
//! every time. Kept by class alone, their blocks piled up to the limit: an
//! exam of 16 questions on a 64-wide model held 260 MiB of freed blocks
//! beside the 50 it used. So a freed block also serves requests of up to
//! [`LEND_RATIO`] times smaller, and a request nothing can serve first
//! returns the cached blocks smaller than it to the system (the block it
//! gets will serve theirs): what the process holds stays near what its
//! largest pass uses.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// Requests of at least this many bytes are served from, and returned to, the cache.
pub const MIN_BLOCK: usize = 256 << 10;
/// How many freed blocks the cache holds at most: one training step of the
/// bench's d256 model frees a few hundred blocks over 256 KiB; with 64 slots
/// most were evicted before reuse.
pub const SLOTS: usize = 512;
/// A cached block serves requests of a class down to this many times smaller.
pub const LEND_RATIO: usize = 2;
/// Every cached block has this alignment, so a block freed by one request
/// can serve any other request of its class (larger alignments bypass the cache).
const BLOCK_ALIGN: usize = 4096;
/// Default limit on the bytes the cache holds (freed blocks only).
pub const DEFAULT_LIMIT: usize = 4 << 30;

pub struct BlockCache {
    limit: usize,
    state: Mutex<Slots>,
}

#[derive(Clone, Copy)]
struct Slot {
    /// Rounded block size; 0 marks an empty slot.
    class: usize,
    address: usize,
    freed_at: u64,
}

impl Slot {
    const EMPTY: Slot = Slot {
        class: 0,
        address: 0,
        freed_at: 0,
    };
}

/// A block handed out for a smaller request than its class: its class,
/// for when it comes back (the request's layout names the smaller one).
#[derive(Clone, Copy)]
struct Lent {
    address: usize,
    /// 0 marks an empty entry.
    class: usize,
}

struct Slots {
    slots: [Slot; SLOTS],
    lent: [Lent; SLOTS],
    /// Entries in `lent`: most frees (a training step's) find none to look up.
    lent_count: usize,
    cached_bytes: usize,
    clock: u64,
}

impl Slots {
    /// Takes the block out of slot `index`.
    fn remove(&mut self, index: usize) -> Slot {
        let slot = std::mem::replace(&mut self.slots[index], Slot::EMPTY);
        self.cached_bytes -= slot.class;
        slot
    }
}

impl BlockCache {
    pub const fn new() -> Self {
        Self::with_limit(DEFAULT_LIMIT)
    }

    pub const fn with_limit(limit: usize) -> Self {
        BlockCache {
            limit,
            state: Mutex::new(Slots {
                slots: [Slot::EMPTY; SLOTS],
                lent: [Lent { address: 0, class: 0 }; SLOTS],
                lent_count: 0,
                cached_bytes: 0,
                clock: 0,
            }),
        }
    }

    /// Bytes held in freed blocks right now.
    pub fn cached_bytes(&self) -> usize {
        self.slots().cached_bytes
    }

    /// Returns every freed block to the system: before an instance whose
    /// peak is measured on its own, which must not count what earlier
    /// work freed (a training's blocks, held for reuse, beside the scoring
    /// that follows it in the same process).
    pub fn release(&self) {
        self.return_smaller(usize::MAX);
        trim_system_heap();
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        // Nothing under the lock can panic, but a poisoned lock must not
        // take the allocator down with it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A cached block for a request of `class`: the most recently freed of
    /// the class, else the smallest up to `LEND_RATIO` times larger (while
    /// there is room to remember it is lent).
    fn take(&self, class: usize) -> Option<*mut u8> {
        let mut state = self.slots();
        // The most recently freed block of the class: its pages are the likeliest to be warm.
        let exact = state
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.class == class)
            .max_by_key(|(_, s)| s.freed_at)
            .map(|(index, _)| index);
        if let Some(index) = exact {
            return Some(state.remove(index).address as *mut u8);
        }
        let entry = state.lent.iter().position(|l| l.class == 0)?;
        let (index, _) = state
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.class > class && s.class <= class.saturating_mul(LEND_RATIO))
            .min_by_key(|(_, s)| (s.class, std::cmp::Reverse(s.freed_at)))?;
        let slot = state.remove(index);
        state.lent[entry] = Lent {
            address: slot.address,
            class: slot.class,
        };
        state.lent_count += 1;
        Some(slot.address as *mut u8)
    }

    /// The class of the block at `address`, handed out for a request of
    /// `requested`: its own when it was lent to a smaller request.
    fn class_of(&self, address: *mut u8, requested: usize) -> usize {
        let mut state = self.slots();
        if state.lent_count == 0 {
            return requested;
        }
        match state
            .lent
            .iter()
            .position(|l| l.class != 0 && l.address == address as usize)
        {
            Some(entry) => {
                state.lent_count -= 1;
                std::mem::replace(&mut state.lent[entry], Lent { address: 0, class: 0 }).class
            }
            None => requested,
        }
    }

    /// Before a request of `class` goes to the system: the cached blocks
    /// smaller than it go back first. They could not serve it, and the
    /// block it gets will serve theirs once freed.
    fn return_smaller(&self, class: usize) {
        let mut returned = [(0usize, 0usize); SLOTS];
        let mut count = 0;
        {
            let mut state = self.slots();
            for index in 0..SLOTS {
                let slot = state.slots[index];
                if slot.class != 0 && slot.class < class {
                    state.remove(index);
                    returned[count] = (slot.address, slot.class);
                    count += 1;
                }
            }
        }
        // Outside the lock: munmap can take a while.
        for &(address, class) in &returned[..count] {
            unsafe { System.dealloc(address as *mut u8, block_layout(class)) };
        }
    }

    /// Keeps `address` for reuse, or frees it (or an older block) when the
    /// cache is full.
    fn keep(&self, address: *mut u8, class: usize) {
        if class > self.limit {
            unsafe { System.dealloc(address, block_layout(class)) };
            return;
        }
        let mut evicted = [(0usize, 0usize); SLOTS];
        let mut evicted_count = 0;
        {
            let mut state = self.slots();
            loop {
                let full = state.slots.iter().all(|s| s.class != 0);
                if !full && state.cached_bytes + class <= self.limit {
                    break;
                }
                let (oldest, _) = state
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.class != 0)
                    .min_by_key(|(_, s)| s.freed_at)
                    .expect("a full or over-limit cache holds a block");
                let slot = state.remove(oldest);
                evicted[evicted_count] = (slot.address, slot.class);
                evicted_count += 1;
            }
            state.clock += 1;
            let freed_at = state.clock;
            let free = state
                .slots
                .iter()
                .position(|s| s.class == 0)
                .expect("room was made above");
            state.slots[free] = Slot {
                class,
                address: address as usize,
                freed_at,
            };
            state.cached_bytes += class;
        }
        // Returned to the system outside the lock: munmap can take a while.
        for &(address, class) in &evicted[..evicted_count] {
            unsafe { System.dealloc(address as *mut u8, block_layout(class)) };
        }
    }
}

impl Default for BlockCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Asks glibc to give the kernel the free pages of its heap: the blocks
/// returned above, and small objects freed, stay resident in it otherwise
/// (glibc raises its mmap threshold as blocks are freed, so blocks of up to
/// 32 MiB end up in the heap).
fn trim_system_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim takes no pointers and is safe to call at any time.
        unsafe { malloc_trim(0) };
    }
}

/// Whether a request is served by the cache.
fn cached(layout: Layout) -> bool {
    layout.size() >= MIN_BLOCK && layout.align() <= BLOCK_ALIGN
}

/// Rounds a size up to its class: sixteen classes per power of two, so a
/// block serves requests up to 1/16 smaller and at most 6.25 % is unused.
fn size_class(size: usize) -> usize {
    let power_below = 1usize << (usize::BITS - 1 - size.leading_zeros());
    let step = (power_below / 16).max(BLOCK_ALIGN);
    size.div_ceil(step) * step
}

fn block_layout(class: usize) -> Layout {
    // Classes are multiples of BLOCK_ALIGN, far below isize::MAX for any request that got this far.
    Layout::from_size_align(class, BLOCK_ALIGN).expect("a size class is a valid layout")
}

unsafe impl GlobalAlloc for BlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !cached(layout) {
            return unsafe { System.alloc(layout) };
        }
        let class = size_class(layout.size());
        match self.take(class) {
            Some(block) => block,
            None => {
                self.return_smaller(class);
                unsafe { System.alloc(block_layout(class)) }
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !cached(layout) {
            return unsafe { System.alloc_zeroed(layout) };
        }
        let class = size_class(layout.size());
        match self.take(class) {
            Some(block) => {
                unsafe { block.write_bytes(0, layout.size()) };
                block
            }
            None => {
                self.return_smaller(class);
                unsafe { System.alloc_zeroed(block_layout(class)) }
            }
        }
    }

    unsafe fn dealloc(&self, address: *mut u8, layout: Layout) {
        if cached(layout) {
            self.keep(address, self.class_of(address, size_class(layout.size())));
        } else {
            unsafe { System.dealloc(address, layout) };
        }
    }

    unsafe fn realloc(&self, address: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (cached(layout), cached(new_layout)) {
            (false, false) => unsafe { System.realloc(address, layout, new_size) },
            (true, true) if size_class(layout.size()) == size_class(new_size) => address,
            _ => {
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    unsafe {
                        std::ptr::copy_nonoverlapping(address, moved, layout.size().min(new_size));
                        self.dealloc(address, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1 << 20;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 64).unwrap()
    }

    #[test]
    fn a_freed_large_block_serves_the_next_request_of_its_class() {
        let cache = BlockCache::new();
        unsafe {
            let first = cache.alloc(layout(3 * MB));
            first.write_bytes(7, 3 * MB);
            cache.dealloc(first, layout(3 * MB));
            assert_eq!(cache.cached_bytes(), size_class(3 * MB));
            // A slightly smaller request is in the same class.
            let again = cache.alloc(layout(3 * MB - 1000));
            assert_eq!(again, first);
            assert_eq!(cache.cached_bytes(), 0);
            cache.dealloc(again, layout(3 * MB - 1000));
            let other = cache.alloc(layout(5 * MB));
            assert_ne!(other, first, "a different class is not served by the cached block");
            cache.dealloc(other, layout(5 * MB));
        }
    }

    #[test]
    fn release_gives_every_kept_block_back() {
        let cache = BlockCache::new();
        unsafe {
            let blocks: Vec<*mut u8> = [MB, 3 * MB, 40 * MB].iter().map(|&n| cache.alloc(layout(n))).collect();
            for (&b, n) in blocks.iter().zip([MB, 3 * MB, 40 * MB]) {
                b.write_bytes(1, n);
                cache.dealloc(b, layout(n));
            }
            assert_eq!(
                cache.cached_bytes(),
                size_class(MB) + size_class(3 * MB) + size_class(40 * MB)
            );
            cache.release();
            assert_eq!(cache.cached_bytes(), 0);
            // Still a working allocator afterwards.
            let again = cache.alloc(layout(3 * MB));
            again.write_bytes(2, 3 * MB);
            cache.dealloc(again, layout(3 * MB));
            assert_eq!(cache.cached_bytes(), size_class(3 * MB));
        }
    }

    #[test]
    fn a_reused_block_is_zeroed_when_asked() {
        let cache = BlockCache::new();
        unsafe {
            let dirty = cache.alloc(layout(2 * MB));
            dirty.write_bytes(0xAB, 2 * MB);
            cache.dealloc(dirty, layout(2 * MB));
            let zeroed = cache.alloc_zeroed(layout(2 * MB));
            assert_eq!(zeroed, dirty);
            assert!(std::slice::from_raw_parts(zeroed, 2 * MB).iter().all(|&b| b == 0));
            cache.dealloc(zeroed, layout(2 * MB));
        }
    }

    #[test]
    fn the_cache_never_holds_more_than_its_limit_and_evicts_the_oldest() {
        let cache = BlockCache::with_limit(5 * MB);
        unsafe {
            let blocks: Vec<*mut u8> = (0..3).map(|_| cache.alloc(layout(2 * MB))).collect();
            for &b in &blocks {
                cache.dealloc(b, layout(2 * MB));
                assert!(cache.cached_bytes() <= 5 * MB);
            }
            assert_eq!(cache.cached_bytes(), 4 * MB);
            // The first one freed was evicted; the last one freed comes back first.
            assert_eq!(cache.alloc(layout(2 * MB)), blocks[2]);
            assert_eq!(cache.alloc(layout(2 * MB)), blocks[1]);
            let fresh = cache.alloc(layout(2 * MB));
            for b in [blocks[1], blocks[2], fresh] {
                cache.dealloc(b, layout(2 * MB));
            }
            // A block larger than the whole limit is never kept.
            let huge = cache.alloc(layout(6 * MB));
            cache.dealloc(huge, layout(6 * MB));
            assert!(cache.cached_bytes() <= 5 * MB);
        }
    }

    #[test]
    fn more_freed_blocks_than_slots_evict_instead_of_failing() {
        let cache = BlockCache::new();
        unsafe {
            let blocks: Vec<*mut u8> = (0..SLOTS + 3).map(|_| cache.alloc(layout(MIN_BLOCK))).collect();
            for &b in &blocks {
                cache.dealloc(b, layout(MIN_BLOCK));
            }
            assert_eq!(cache.cached_bytes(), SLOTS * MIN_BLOCK);
            while cache.cached_bytes() > 0 {
                let b = cache.alloc(layout(MIN_BLOCK));
                System.dealloc(b, block_layout(MIN_BLOCK));
            }
        }
    }

    #[test]
    fn realloc_keeps_contents_across_classes_and_the_block_within_one() {
        let cache = BlockCache::new();
        unsafe {
            let small = cache.alloc(layout(1000));
            small.write_bytes(5, 1000);
            let large = cache.realloc(small, layout(1000), 2 * MB + 4096);
            assert!(std::slice::from_raw_parts(large, 1000).iter().all(|&b| b == 5));
            let same = cache.realloc(large, layout(2 * MB + 4096), 2 * MB + 65536);
            assert_eq!(same, large, "growing within the class needs no move");
            let back = cache.realloc(same, layout(2 * MB + 65536), 10);
            assert!(std::slice::from_raw_parts(back, 10).iter().all(|&b| b == 5));
            cache.dealloc(back, layout(10));
        }
    }

    #[test]
    fn small_and_over_aligned_requests_bypass_the_cache() {
        let cache = BlockCache::new();
        unsafe {
            let small = cache.alloc(layout(MIN_BLOCK - 1));
            cache.dealloc(small, layout(MIN_BLOCK - 1));
            let aligned = Layout::from_size_align(2 * MB, 2 * MB).unwrap();
            let big_align = cache.alloc(aligned);
            assert_eq!(big_align as usize % (2 * MB), 0);
            cache.dealloc(big_align, aligned);
            assert_eq!(cache.cached_bytes(), 0);
        }
    }

    #[test]
    fn a_larger_freed_block_serves_a_smaller_request_and_comes_back_whole() {
        let cache = BlockCache::new();
        unsafe {
            let big = cache.alloc(layout(6 * MB));
            cache.dealloc(big, layout(6 * MB));
            // Half its size or more: served by it.
            let lent = cache.alloc(layout(3 * MB));
            assert_eq!(lent, big);
            assert_eq!(cache.cached_bytes(), 0);
            cache.dealloc(lent, layout(3 * MB));
            assert_eq!(cache.cached_bytes(), size_class(6 * MB), "kept as the block it is");
            // Less than half: a block of its own.
            let small = cache.alloc(layout(2 * MB));
            assert_ne!(small, big);
            cache.dealloc(small, layout(2 * MB));
            // The exact class first, when there is one.
            assert_eq!(cache.alloc(layout(2 * MB)), small);
            cache.dealloc(small, layout(2 * MB));
        }
    }

    #[test]
    fn a_request_nothing_can_serve_returns_the_smaller_blocks_first() {
        let cache = BlockCache::new();
        unsafe {
            let blocks: Vec<*mut u8> = [1, 2, 3].iter().map(|&m| cache.alloc(layout(m * MB))).collect();
            for (&b, m) in blocks.iter().zip([1, 2, 3]) {
                cache.dealloc(b, layout(m * MB));
            }
            let large = cache.alloc(layout(8 * MB));
            assert_eq!(cache.cached_bytes(), 0, "the 1, 2 and 3 MiB blocks went back");
            cache.dealloc(large, layout(8 * MB));
        }
    }

    /// Passes of every length, as an exam's prompts are: each allocates
    /// activations, logits and attention scores for its length and frees
    /// them. Kept by exact class alone, the freed blocks of every length
    /// held past twice the largest pass within a few dozen passes.
    #[test]
    fn passes_of_varying_length_hold_near_what_the_largest_pass_uses() {
        let cache = BlockCache::new();
        let pass = |t: usize| [8 * t * 256, 8 * t * 256, 8 * t * 4000, 8 * 4 * t * t * 4];
        let largest: usize = pass(450).iter().map(|&s| size_class(s)).sum();
        let mut state: u64 = 7;
        for _ in 0..300 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let t = 100 + (state >> 33) as usize % 351;
            unsafe {
                let blocks: Vec<(*mut u8, usize)> = pass(t).iter().map(|&s| (cache.alloc(layout(s)), s)).collect();
                for (b, s) in blocks {
                    cache.dealloc(b, layout(s));
                }
            }
            assert!(
                cache.cached_bytes() <= 2 * largest,
                "{} MiB held after a pass of {t}; the largest pass uses {} MiB",
                cache.cached_bytes() / MB,
                largest / MB
            );
        }
        unsafe {
            while cache.cached_bytes() > 0 {
                let mut state = cache.slots();
                let index = state.slots.iter().position(|s| s.class != 0).unwrap();
                let slot = state.remove(index);
                drop(state);
                System.dealloc(slot.address as *mut u8, block_layout(slot.class));
            }
        }
    }

    #[test]
    fn size_classes_waste_at_most_a_sixteenth() {
        for size in [MB, MB + 1, 3 * MB + 17, 64 * MB - 5, 100 * MB + 12345] {
            let class = size_class(size);
            assert!(class >= size && class.is_multiple_of(BLOCK_ALIGN));
            assert!(
                (class - size) as f64 <= size as f64 / 16.0 + BLOCK_ALIGN as f64,
                "{size} → {class}"
            );
        }
    }
}
