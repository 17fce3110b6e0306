//! Compressed sample chunks: delta-of-delta timestamps and XOR'd values, as in Facebook's Gorilla paper and
//! Prometheus' XOR chunks (about 1.3 bytes per sample for regular scrapes).

/// Samples per chunk before a new one is cut (Prometheus cuts at 120).
pub const CHUNK_SAMPLES: u16 = 120;

#[derive(Debug, Clone, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits used in the last byte (0 = the last byte is full, or there is none).
    used: u8,
}

impl BitWriter {
    fn bit(&mut self, b: bool) {
        if self.used == 0 {
            self.bytes.push(0);
        }
        if b {
            let last = self.bytes.len() - 1;
            self.bytes[last] |= 0x80 >> self.used;
        }
        self.used = (self.used + 1) % 8;
    }

    /// Writes the low `n` bits of `v`, most significant first, a byte's worth at a time.
    fn bits(&mut self, v: u64, n: u8) {
        let mut n = n;
        while n > 0 {
            if self.used == 0 {
                self.bytes.push(0);
            }
            let free = 8 - self.used;
            let take = free.min(n);
            let chunk = ((v >> (n - take)) & ((1u64 << take) - 1)) as u8;
            let last = self.bytes.len() - 1;
            self.bytes[last] |= chunk << (free - take);
            self.used = (self.used + take) % 8;
            n -= take;
        }
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bit(&mut self) -> Option<bool> {
        let byte = *self.bytes.get(self.pos / 8)?;
        let b = byte & (0x80 >> (self.pos % 8)) != 0;
        self.pos += 1;
        Some(b)
    }

    fn bits(&mut self, n: u8) -> Option<u64> {
        let mut v = 0u64;
        let mut n = n;
        while n > 0 {
            let byte = *self.bytes.get(self.pos / 8)?;
            let offset = (self.pos % 8) as u8;
            let avail = 8 - offset;
            let take = avail.min(n);
            let chunk = (byte >> (avail - take)) & (((1u16 << take) - 1) as u8);
            v = (v << take) | u64::from(chunk);
            self.pos += usize::from(take);
            n -= take;
        }
        Some(v)
    }
}

/// The delta-of-delta buckets: (prefix, prefix length, value bits).
const DOD_BUCKETS: [(u64, u8, u8); 3] = [(0b10, 2, 14), (0b110, 3, 17), (0b1110, 4, 20)];

fn sign_extend(v: u64, bits: u8) -> i64 {
    let shift = 64 - u32::from(bits);
    ((v << shift) as i64) >> shift
}

/// An append-only compressed chunk of (milliseconds, value) samples in time order.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    w: BitWriter,
    count: u16,
    first_t: i64,
    last_t: i64,
    last_delta: i64,
    last_v: u64,
    leading: u8,
    trailing: u8,
}

impl Chunk {
    pub fn new() -> Chunk {
        Chunk { leading: u8::MAX, ..Chunk::default() }
    }

    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn is_full(&self) -> bool {
        self.count >= CHUNK_SAMPLES
    }

    pub fn first_t(&self) -> i64 {
        self.first_t
    }

    pub fn last_t(&self) -> i64 {
        self.last_t
    }

    /// The last value appended, if any.
    pub fn last_value(&self) -> Option<f64> {
        (self.count > 0).then(|| f64::from_bits(self.last_v))
    }

    /// Compressed size in bytes.
    pub fn bytes(&self) -> usize {
        self.w.bytes.len()
    }

    /// Appends a sample; `t` must be after the last one (callers check).
    pub fn push(&mut self, t: i64, v: f64) {
        let bits = v.to_bits();
        match self.count {
            0 => {
                self.w.bits(t as u64, 64);
                self.w.bits(bits, 64);
                self.first_t = t;
            }
            1 => {
                let delta = t - self.last_t;
                self.w.bits(delta as u64, 64);
                self.last_delta = delta;
                self.push_value(bits);
            }
            _ => {
                let delta = t - self.last_t;
                let dod = delta - self.last_delta;
                if dod == 0 {
                    self.w.bit(false);
                } else if let Some(&(prefix, plen, vbits)) = DOD_BUCKETS.iter().find(|(_, _, vb)| {
                    let half = 1i64 << (vb - 1);
                    dod > -half && dod <= half
                }) {
                    self.w.bits(prefix, plen);
                    self.w.bits(dod as u64 & ((1u64 << vbits) - 1), vbits);
                } else {
                    self.w.bits(0b1111, 4);
                    self.w.bits(dod as u64, 64);
                }
                self.last_delta = delta;
                self.push_value(bits);
            }
        }
        self.last_t = t;
        self.last_v = bits;
        self.count += 1;
    }

    fn push_value(&mut self, bits: u64) {
        let xor = bits ^ self.last_v;
        if xor == 0 {
            self.w.bit(false);
            return;
        }
        self.w.bit(true);
        let leading = (xor.leading_zeros() as u8).min(31);
        let trailing = xor.trailing_zeros() as u8;
        if self.leading != u8::MAX && leading >= self.leading && trailing >= self.trailing {
            // Fits in the previous window.
            self.w.bit(false);
            let sig = 64 - self.leading - self.trailing;
            self.w.bits(xor >> self.trailing, sig);
        } else {
            self.w.bit(true);
            let sig = 64 - leading - trailing;
            self.w.bits(u64::from(leading), 5);
            // 64 significant bits are written as 0: six bits hold 0..=63.
            self.w.bits(u64::from(sig) & 0x3f, 6);
            self.w.bits(xor >> trailing, sig);
            self.leading = leading;
            self.trailing = trailing;
        }
    }

    /// The samples, oldest first.
    pub fn iter(&self) -> ChunkIter<'_> {
        ChunkIter {
            r: BitReader { bytes: &self.w.bytes, pos: 0 },
            left: self.count,
            n: 0,
            t: 0,
            delta: 0,
            v: 0,
            leading: 0,
            trailing: 0,
        }
    }

    /// Serialized form: count, first and last time, and the bit stream.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&(self.w.bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.w.bytes);
    }

    /// Reads a chunk written by [`Chunk::encode`]; returns it and the bytes consumed. A full chunk is closed,
    /// so only the decoder's view is rebuilt; appends continue from its last sample.
    pub fn decode(input: &[u8]) -> Option<(Chunk, usize)> {
        let count = u16::from_le_bytes(input.get(0..2)?.try_into().ok()?);
        let len = u32::from_le_bytes(input.get(2..6)?.try_into().ok()?) as usize;
        let bytes = input.get(6..6 + len)?.to_vec();
        let mut c = Chunk::new();
        // Replaying the samples rebuilds the encoder's state exactly (and validates the stream).
        let probe = Chunk { w: BitWriter { bytes, used: 0 }, count, ..Chunk::new() };
        let mut seen = 0u16;
        for (t, v) in probe.iter() {
            c.push(t, v);
            seen += 1;
        }
        (seen == count).then_some((c, 6 + len))
    }
}

/// Decodes a chunk's samples.
pub struct ChunkIter<'a> {
    r: BitReader<'a>,
    left: u16,
    n: u16,
    t: i64,
    delta: i64,
    v: u64,
    leading: u8,
    trailing: u8,
}

impl ChunkIter<'_> {
    fn next_value(&mut self) -> Option<u64> {
        if !self.r.bit()? {
            return Some(self.v);
        }
        if self.r.bit()? {
            self.leading = self.r.bits(5)? as u8;
            let mut sig = self.r.bits(6)? as u8;
            if sig == 0 {
                sig = 64;
            }
            self.trailing = 64 - self.leading - sig;
        }
        let sig = 64 - self.leading - self.trailing;
        let xor = self.r.bits(sig)? << self.trailing;
        Some(self.v ^ xor)
    }
}

impl Iterator for ChunkIter<'_> {
    type Item = (i64, f64);

    fn next(&mut self) -> Option<(i64, f64)> {
        if self.left == 0 {
            return None;
        }
        match self.n {
            0 => {
                self.t = self.r.bits(64)? as i64;
                self.v = self.r.bits(64)?;
            }
            1 => {
                self.delta = self.r.bits(64)? as i64;
                self.t += self.delta;
                self.v = self.next_value()?;
            }
            _ => {
                let dod = if !self.r.bit()? {
                    0
                } else if !self.r.bit()? {
                    sign_extend(self.r.bits(14)?, 14)
                } else if !self.r.bit()? {
                    sign_extend(self.r.bits(17)?, 17)
                } else if !self.r.bit()? {
                    sign_extend(self.r.bits(20)?, 20)
                } else {
                    self.r.bits(64)? as i64
                };
                self.delta += dod;
                self.t += self.delta;
                self.v = self.next_value()?;
            }
        }
        self.n += 1;
        self.left -= 1;
        Some((self.t, f64::from_bits(self.v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(samples: &[(i64, f64)]) -> Chunk {
        let mut c = Chunk::new();
        for &(t, v) in samples {
            c.push(t, v);
        }
        let back: Vec<(i64, u64)> = c.iter().map(|(t, v)| (t, v.to_bits())).collect();
        let want: Vec<(i64, u64)> = samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
        assert_eq!(back, want);
        let mut buf = Vec::new();
        c.encode(&mut buf);
        let (d, used) = Chunk::decode(&buf).expect("decodes");
        assert_eq!(used, buf.len());
        assert_eq!(d.iter().map(|(t, v)| (t, v.to_bits())).collect::<Vec<_>>(), want);
        c
    }

    #[test]
    fn regular_scrapes_compress_well() {
        let s: Vec<(i64, f64)> = (0..120).map(|i| (1_700_000_000_000 + i * 15_000, (i / 10) as f64)).collect();
        let c = roundtrip(&s);
        assert!(c.bytes() < 120 * 2, "{} bytes for 120 samples", c.bytes());
    }

    #[test]
    fn irregular_times_and_awkward_values_roundtrip() {
        let mut t = 1_000i64;
        let mut s = Vec::new();
        let vals = [0.0, -0.0, 1.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MIN_POSITIVE, f64::MAX, 1e-300];
        for i in 0..119i64 {
            // Jitter in every delta-of-delta bucket, including one larger than 20 bits.
            t += [15_000, 15_003, 14_990, 60_000, 1, 3_000_000, 15_000][i as usize % 7];
            s.push((t, vals[i as usize % vals.len()] * (i as f64 + 1.0)));
        }
        s.push((t + (1i64 << 40), f64::from_bits(0x7ff0_0000_0000_0002)));
        roundtrip(&s);
    }

    #[test]
    fn single_and_two_samples() {
        roundtrip(&[(5, 1.0)]);
        roundtrip(&[(5, 1.0), (-3, 2.0)]);
    }

    #[test]
    fn truncated_input_is_refused() {
        let c = roundtrip(&[(1, 1.0), (2, 2.0), (3, 4.0)]);
        let mut buf = Vec::new();
        c.encode(&mut buf);
        assert!(Chunk::decode(&buf[..buf.len() - 1]).is_none());
        assert!(Chunk::decode(&buf[..3]).is_none());
    }
}
