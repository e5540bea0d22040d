//! Reading structured values off fuzz input: every byte string is a valid
//! input, and running out of bytes reads zeros.

pub(super) struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    pub(super) fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes(data)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub(super) fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// Up to `n` bytes.
    pub(super) fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken
    }

    /// A little-endian integer of `width` bytes (fewer if the input ends).
    pub(super) fn int(&mut self, width: usize) -> u64 {
        self.take(width)
            .iter()
            .rev()
            .fold(0u64, |n, &b| (n << 8) | u64::from(b))
    }

    pub(super) fn u32(&mut self) -> u32 {
        self.int(4) as u32
    }

    pub(super) fn u64(&mut self) -> u64 {
        self.int(8)
    }

    /// A short byte string: a length byte, then that many bytes.
    pub(super) fn short(&mut self) -> Vec<u8> {
        let len = usize::from(self.byte());
        self.take(len).to_vec()
    }

    /// One of `choices`, by the next byte.
    pub(super) fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[usize::from(self.byte()) % choices.len()]
    }
}
