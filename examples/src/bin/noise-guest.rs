//! A guest that writes pseudo-random bytes to stdout and/or stderr as fast
//! as it can, for log-capture tests and benchmarks.
//!
//! ```text
//! noise-guest [--stdout-bytes N] [--stderr-bytes N] [--seed S] [--chunk K]
//! ```
//!
//! Each stream's bytes depend only on the seed and the stream (not on the
//! chunk size or the interleaving), so a test can produce the expected bytes
//! by running it again with the streams redirected to files. The bytes come
//! from a xorshift64* generator, except that each stream's first byte is
//! 0xFF (never valid UTF-8) and its last byte is never `\n`. Chunks go to
//! stdout and stderr alternately. Exits 0 when done, 2 on bad arguments,
//! 1 if a write fails (for example a closed pipe).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::ExitCode;

/// Parsed command line.
struct Args {
    stdout_bytes: u64,
    stderr_bytes: u64,
    seed: u64,
    chunk: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        stdout_bytes: 0,
        stderr_bytes: 0,
        seed: 1,
        chunk: 64 * 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = value
            .parse::<u64>()
            .map_err(|_| format!("{flag}: not a number: {value}"))?;
        match flag.as_str() {
            "--stdout-bytes" => args.stdout_bytes = number,
            "--stderr-bytes" => args.stderr_bytes = number,
            "--seed" => args.seed = number,
            "--chunk" if number > 0 => args.chunk = number as usize,
            _ => return Err(format!("unknown or invalid argument {flag} {value}")),
        }
    }
    Ok(args)
}

/// One stream's deterministic byte source.
struct Noise {
    state: u64,
    produced: u64,
    total: u64,
}

impl Noise {
    fn new(seed: u64, stream: u64, total: u64) -> Self {
        // Distinct non-zero state per (seed, stream).
        let state = (seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        Self {
            state,
            produced: 0,
            total,
        }
    }

    fn remaining(&self) -> u64 {
        self.total - self.produced
    }

    fn next_word(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` with the next `buf.len()` bytes (at most `remaining`).
    fn fill(&mut self, buf: &mut [u8]) {
        // Whole words only, so the byte sequence does not depend on how it
        // is chunked: chunks are multiples of 8 except the stream's last.
        for word in buf.chunks_mut(8) {
            let bytes = self.next_word().to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        if self.produced == 0 && !buf.is_empty() {
            buf[0] = 0xFF;
        }
        self.produced += buf.len() as u64;
        if self.produced == self.total
            && let Some(last) = buf.last_mut()
            && *last == b'\n'
        {
            *last = b'!';
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("noise-guest: {message}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

fn run(args: &Args) -> std::io::Result<()> {
    // Unbuffered handles on fds 1 and 2 (std's stdout is line-buffered).
    let mut out = File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let mut err = File::from(std::io::stderr().as_fd().try_clone_to_owned()?);
    let chunk = args.chunk.div_ceil(8) * 8;
    let mut streams = [
        (Noise::new(args.seed, 1, args.stdout_bytes), &mut out),
        (Noise::new(args.seed, 2, args.stderr_bytes), &mut err),
    ];
    let mut buf = vec![0u8; chunk];
    while streams.iter().any(|(noise, _)| noise.remaining() > 0) {
        for (noise, file) in streams.iter_mut() {
            let n = noise.remaining().min(chunk as u64) as usize;
            if n == 0 {
                continue;
            }
            noise.fill(&mut buf[..n]);
            file.write_all(&buf[..n])?;
        }
    }
    Ok(())
}
