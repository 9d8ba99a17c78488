//! [`LineSplitter`]: turns the live feed's arbitrary chunks into lines.

/// Reassembles lines from chunks that may end mid-line.
#[derive(Debug, Clone)]
pub struct LineSplitter {
    partial: Vec<u8>,
    max_line: usize,
}

impl LineSplitter {
    /// A splitter that emits a line early, in pieces of `max_line` bytes, if
    /// it grows past that without a newline (so memory stays bounded).
    pub fn new(max_line: usize) -> Self {
        Self {
            partial: Vec::new(),
            max_line: max_line.max(1),
        }
    }

    /// Feeds a chunk; returns the lines it completed, without their `\n`.
    pub fn push(&mut self, mut chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        while !chunk.is_empty() {
            let room = self.max_line - self.partial.len();
            let window = &chunk[..chunk.len().min(room + 1)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.extend_from_slice(&chunk[..i]);
                    lines.push(std::mem::take(&mut self.partial));
                    chunk = &chunk[i + 1..];
                }
                None => {
                    let take = chunk.len().min(room);
                    self.partial.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    if self.partial.len() == self.max_line {
                        lines.push(std::mem::take(&mut self.partial));
                    }
                }
            }
        }
        lines
    }

    /// Bytes held for a line not complete yet.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Takes the incomplete last line, if any (for example at end of stream).
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_lines_across_chunks() {
        let mut s = LineSplitter::new(100);
        assert_eq!(s.push(b"ab"), Vec::<Vec<u8>>::new());
        assert_eq!(s.push(b"c\n\nd\xff"), vec![b"abc".to_vec(), b"".to_vec()]);
        assert_eq!(s.push(b"e\n"), vec![b"d\xffe".to_vec()]);
        assert_eq!(s.flush(), None);
        s.push(b"tail");
        assert_eq!(s.flush(), Some(b"tail".to_vec()));
    }

    #[test]
    fn splits_overlong_lines() {
        let mut s = LineSplitter::new(3);
        assert_eq!(
            s.push(b"abcdefg\nxyz\n"),
            vec![
                b"abc".to_vec(),
                b"def".to_vec(),
                b"g".to_vec(),
                b"xyz".to_vec()
            ]
        );
        assert_eq!(s.flush(), None);
    }
}
