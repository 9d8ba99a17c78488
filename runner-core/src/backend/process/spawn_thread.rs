//! The thread guests are created on, with a descriptor table of its own.
//!
//! Creating a process copies the creating thread's descriptor table, and
//! the exec then closes every close-on-exec entry of that copy: both cost
//! time in proportion to the descriptors open. A runner hosting a thousand
//! sessions holds about eight thousand (pipes, pidfds, sockets, lock
//! files), which made every launch slower the bigger the runner grew,
//! whatever the spawn primitive. This thread unshares its table from the
//! rest of the process (`unshare(CLONE_FILES)`) and closes everything above
//! 2 in its copy except its end of a socket pair, so a child starts from a
//! table of a handful of entries however many sessions the runner hosts.
//!
//! One spawn: the caller (a runtime thread, blocked meanwhile, as it was
//! when it created children itself) queues the prepared child and sends the
//! child's three stdio ends and the program's descriptor over the socket
//! pair (`SCM_RIGHTS` installs copies in the thread's table). The thread
//! creates the child, sends its pidfd back the same way, closes its copies
//! and answers. Spawns take turns (a lock); the thread keeps the last
//! child's pidfd until the next job, so that a caller that failed to
//! receive it can still have that child killed and reaped.
//!
//! Rules for code running on this thread: descriptor numbers from the rest
//! of the process mean nothing here, so it logs nothing and uses no
//! descriptor it did not receive or create; and every signal stays blocked
//! on it for its whole life, so no handler of the process (which may write
//! to a descriptor of its own) ever runs here.
//!
//! Guests get their parent-death signal when the thread that created them
//! ends. This thread ends only when the backend and every guest it created
//! are gone (each holds a [`SpawnThread`] handle), so a guest never loses
//! its parent to a runtime thread retiring.
//!
//! Where the thread cannot be set up (a seccomp profile refusing `unshare`,
//! say), the backend creates children on the calling thread instead.

use super::spawn::{Prepared, SpawnError, reap_failed};
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::process::{Pid, Signal};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

/// The size of the runner's descriptor table (`FDSize`, slots allocated)
/// from which children are created on the spawn thread. Below it, copying
/// the table costs less than handing the spawn to another thread (a
/// wake-up each way, which on a busy machine can wait for a CPU); the
/// kernel grows the table in powers of two, so this means a descriptor
/// numbered 512 or more has been open.
pub(super) const THREAD_FROM_FD_SLOTS: u64 = 1024;

/// Descriptors one spawn sends to the thread: stdin, stdout, stderr and
/// the program.
const MAX_SENT: usize = 4;

/// A backend's spawn thread (see the `process` module docs), started the
/// first time it is needed. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct SpawnThreadSlot(Arc<OnceLock<Option<Arc<SpawnThread>>>>);

impl SpawnThreadSlot {
    /// The thread; `None` if it could not be set up (then never retried:
    /// what refused it, a seccomp profile say, does not change).
    pub(super) fn get(&self) -> Option<Arc<SpawnThread>> {
        let started = self.0.get_or_init(|| match SpawnThread::start() {
            Ok(thread) => Some(Arc::new(thread)),
            Err(error) => {
                tracing::info!(%error, "cannot set up the guest spawn thread; guests are created on the launching thread");
                None
            }
        });
        started.clone()
    }
}

/// A handle on the spawn thread; the thread ends when the last is dropped.
#[derive(Debug)]
pub(super) struct SpawnThread {
    channel: Mutex<Channel>,
    /// The thread's id, for tests that look at its `/proc` entry.
    #[cfg(test)]
    tid: i32,
}

#[derive(Debug)]
struct Channel {
    jobs: mpsc::Sender<Job>,
    /// The runner's end of the socket pair.
    socket: OwnedFd,
}

#[derive(Debug)]
enum Job {
    /// Create a child; the descriptors follow on the socket.
    Spawn {
        prepared: Box<Prepared>,
        with_program: bool,
        answer: mpsc::SyncSender<Result<u32, SpawnError>>,
    },
    /// The caller lost the last child's pidfd: kill and reap that child.
    Abandon { answer: mpsc::SyncSender<()> },
}

impl SpawnThread {
    /// Starts the thread; an error means it could not be set up.
    pub(super) fn start() -> io::Result<Self> {
        let (runner_end, thread_end) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        let thread_raw = thread_end.as_raw_fd();
        let (jobs, queue) = mpsc::channel();
        let (ready_tx, ready) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("guest-spawn".into())
            .spawn(move || match own_table(thread_end) {
                Ok(socket) => {
                    let tid = rustix::thread::gettid().as_raw_nonzero().get();
                    let _ = ready_tx.send(Ok(tid));
                    serve(&queue, &socket);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })?;
        let unshared = ready.recv().map_err(io::Error::other)?;
        let _tid = unshared?;
        forget_thread_end(thread_raw);
        Ok(Self {
            channel: Mutex::new(Channel {
                jobs,
                socket: runner_end,
            }),
            #[cfg(test)]
            tid: _tid,
        })
    }

    /// Creates `prepared`'s child on the thread, with `stdio` as its 0, 1
    /// and 2, executing `program` (or by path without one): its pid and a
    /// pidfd in the runner's table.
    pub(super) fn create(
        &self,
        prepared: Prepared,
        stdio: &[OwnedFd; 3],
        program: Option<BorrowedFd<'_>>,
    ) -> Result<(u32, OwnedFd), SpawnError> {
        let channel = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        let mut fds: Vec<BorrowedFd<'_>> = stdio.iter().map(AsFd::as_fd).collect();
        fds.extend(program);
        // The descriptors go first: a refused send queues no job, so the
        // thread never waits for descriptors that are not coming.
        send_fds(channel.socket.as_fd(), &fds).map_err(SpawnError::Create)?;
        let (answer, answered) = mpsc::sync_channel(1);
        let job = Job::Spawn {
            prepared: Box::new(prepared),
            with_program: program.is_some(),
            answer,
        };
        channel.jobs.send(job).map_err(|_| gone())?;
        let pid = answered.recv().map_err(|_| gone())??;
        match receive_fds(channel.socket.as_fd()) {
            Ok(mut received) if received.len() == 1 => Ok((pid, received.remove(0))),
            other => {
                let (abandon, abandoned) = mpsc::sync_channel(1);
                if channel.jobs.send(Job::Abandon { answer: abandon }).is_ok() {
                    let _ = abandoned.recv();
                }
                Err(SpawnError::Create(other.err().unwrap_or_else(|| {
                    io::Error::other("the guest's pidfd did not arrive from the spawn thread")
                })))
            }
        }
    }
}

fn gone() -> SpawnError {
    SpawnError::Create(io::Error::other("the guest spawn thread has ended"))
}

/// On the new thread: blocks every signal for good, unshares the
/// descriptor table, and closes every descriptor above 2 in the copy but
/// `socket`.
#[allow(unsafe_code)]
fn own_table(socket: OwnedFd) -> io::Result<OwnedFd> {
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None)?;
    // SAFETY: from here this thread runs only `serve`, which uses no
    // descriptor of the shared table but `socket` (present in the copy
    // under the same number) and those it receives or creates itself.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FILES) }?;
    let keep = socket.as_raw_fd() as u32;
    close_range(3, keep - 1);
    close_range(keep + 1, u32::MAX);
    Ok(socket)
}

/// Closes `first..=last` in this thread's own table; the kernels without
/// `close_range` (before 5.9) keep the copy as it is, which still no
/// longer grows with the runner.
#[allow(unsafe_code)]
fn close_range(first: u32, last: u32) {
    if first > last {
        return;
    }
    // SAFETY: a plain syscall on integers. It runs after `unshare`, so it
    // closes entries of this thread's private copy only; nothing on this
    // thread owns any of them (see `own_table`).
    unsafe {
        nix::libc::syscall(nix::libc::SYS_close_range, first, last, 0u32);
    }
}

/// Closes the runner table's copy of the thread's socket end, which the
/// thread now owns in its own table.
#[allow(unsafe_code)]
fn forget_thread_end(raw: RawFd) {
    // SAFETY: `raw` was the thread's end, whose `OwnedFd` moved to the
    // thread and, after `unshare`, names the thread's private copy. The
    // entry in this (shared) table is owned by nothing else and is closed
    // exactly once, here.
    drop(unsafe { OwnedFd::from_raw_fd(raw) });
}

/// The thread's loop, until every handle is dropped.
fn serve(queue: &mpsc::Receiver<Job>, socket: &OwnedFd) {
    let mut last: Option<(u32, OwnedFd)> = None;
    while let Ok(job) = queue.recv() {
        match job {
            Job::Spawn {
                prepared,
                with_program,
                answer,
            } => {
                last = None;
                let answered = match spawn_one(&prepared, with_program, socket.as_fd()) {
                    Ok((pid, pidfd)) => {
                        last = Some((pid, pidfd));
                        Ok(pid)
                    }
                    Err(e) => Err(e),
                };
                let _ = answer.send(answered);
            }
            Job::Abandon { answer } => {
                if let Some((pid, pidfd)) = last.take() {
                    kill_and_reap(pid, &pidfd);
                }
                let _ = answer.send(());
            }
        }
    }
}

/// Receives the job's descriptors, creates the child and sends its pidfd.
fn spawn_one(
    prepared: &Prepared,
    with_program: bool,
    socket: BorrowedFd<'_>,
) -> Result<(u32, OwnedFd), SpawnError> {
    let fds = receive_fds(socket).map_err(SpawnError::Create)?;
    let expected = if with_program { 4 } else { 3 };
    if fds.len() != expected {
        return Err(SpawnError::Create(io::Error::other(format!(
            "the spawn thread received {} descriptors, expected {expected}",
            fds.len()
        ))));
    }
    let stdio = [fds[0].as_fd(), fds[1].as_fd(), fds[2].as_fd()];
    let (pid, pidfd) = prepared.create(stdio, fds.get(3).map(AsFd::as_fd))?;
    if let Err(e) = send_fds(socket, &[pidfd.as_fd()]) {
        kill_and_reap(pid, &pidfd);
        return Err(SpawnError::Create(e));
    }
    Ok((pid, pidfd))
}

/// Kills the group of a child nobody will supervise, and reaps it.
fn kill_and_reap(pid: u32, pidfd: &OwnedFd) {
    if let Some(pgid) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
    }
    let _ = rustix::process::pidfd_send_signal(pidfd, Signal::KILL);
    let _ = reap_failed(pidfd);
}

/// Sends one message carrying `fds`.
fn send_fds(socket: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_SENT))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    let sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(&[0])],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent != 1 {
        return Err(io::Error::other("short send on the spawn socket"));
    }
    Ok(())
}

/// Receives one message and the descriptors it carries (close-on-exec).
fn receive_fds(socket: BorrowedFd<'_>) -> io::Result<Vec<OwnedFd>> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_SENT))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let msg = loop {
        let mut data = [IoSliceMut::new(&mut byte)];
        match rustix::net::recvmsg(socket, &mut data, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    if msg.bytes == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let mut fds = Vec::with_capacity(MAX_SENT);
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(io::Error::other(
            "descriptors lost in transfer (MSG_CTRUNC)",
        ));
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::super::program_fd::ProgramHandle;
    use super::super::spawn::{SpawnRequest, spawn_with};
    use super::*;
    use crate::backend::clean_start::StartRlimits;
    use rustix::process::{WaitId, WaitIdOptions, WaitIdStatus};
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::path::Path;
    use std::time::{Duration, Instant};

    /// Runs `/bin/sh -c <script>` through `thread` (or on this thread).
    fn run_sh(script: &str, thread: Option<&Arc<SpawnThread>>) -> super::super::spawn::Spawned {
        let program = ProgramHandle::open(Path::new("/bin/sh"), true).unwrap();
        let args = [OsString::from("-c"), OsString::from(script)];
        let req = SpawnRequest {
            program: &program,
            args: &args,
            env: &BTreeMap::new(),
            work_dir: Some(Path::new("/")),
            run_as: None,
            rlimits: StartRlimits::capture(),
            null_stdin: false,
        };
        spawn_with(req, None, thread).expect("spawn")
    }

    fn exit_of(pidfd: &OwnedFd) -> WaitIdStatus {
        rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED)
            .unwrap()
            .unwrap()
    }

    /// The descriptors open in `tid`'s table.
    fn table_len(tid: i32) -> usize {
        std::fs::read_dir(format!("/proc/self/task/{tid}/fd"))
            .unwrap()
            .count()
    }

    fn pipes(n: usize) -> Vec<(OwnedFd, OwnedFd)> {
        (0..n)
            .map(|_| rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap())
            .collect()
    }

    #[test]
    fn both_paths_start_the_program_and_hand_back_its_pidfd() {
        let thread = Arc::new(SpawnThread::start().expect("spawn thread"));
        for via in [Some(&thread), None] {
            let child = run_sh("read line; echo \"got $line\"; exit 7", via);
            rustix::io::write(&child.stdin, b"hi\n").unwrap();
            let mut out = [0u8; 16];
            let n = rustix::io::read(&child.stdout, &mut out).unwrap();
            assert_eq!(&out[..n], b"got hi\n");
            assert_eq!(exit_of(&child.pidfd).exit_status(), Some(7));
            assert_eq!(child.spawned_by.is_some(), via.is_some());
        }
    }

    #[test]
    fn the_threads_table_stays_small_however_many_descriptors_the_runner_holds() {
        let _before = pipes(200);
        let thread = Arc::new(SpawnThread::start().expect("spawn thread"));
        // stdio (if open) and the thread's socket end.
        assert!(table_len(thread.tid) <= 4, "{}", table_len(thread.tid));
        let _after = pipes(200);
        let child = run_sh("exit 0", Some(&thread));
        assert_eq!(exit_of(&child.pidfd).exit_status(), Some(0));
        // ... plus the last child's pidfd, kept until the next spawn.
        assert!(table_len(thread.tid) <= 5, "{}", table_len(thread.tid));
    }

    #[test]
    fn the_thread_outlives_its_backend_while_a_child_holds_it_and_then_ends() {
        let thread = Arc::new(SpawnThread::start().expect("spawn thread"));
        let tid = thread.tid;
        // The clean start arms SIGKILL as the parent-death signal.
        let child = run_sh("exec sleep 1000", Some(&thread));
        drop(thread);
        let task = format!("/proc/self/task/{tid}");
        assert!(
            Path::new(&task).exists(),
            "the child still holds the thread"
        );
        drop(child.spawned_by);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&task).exists() {
            assert!(Instant::now() < deadline, "the thread did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Its end fired the child's parent-death signal.
        let status = exit_of(&child.pidfd);
        assert_eq!(status.terminating_signal(), Some(nix::libc::SIGKILL));
    }
}

#[cfg(test)]
mod choice_tests {
    use super::super::program_fd::ProgramHandle;
    use super::super::spawn::{SpawnRequest, spawn};
    use super::*;
    use crate::backend::clean_start::StartRlimits;
    use rustix::process::{WaitId, WaitIdOptions};
    use std::collections::BTreeMap;
    use std::path::Path;

    #[test]
    fn a_big_descriptor_table_sends_the_spawn_to_the_thread() {
        // A descriptor numbered 600 grows the table to 1,024 slots.
        let (read, _write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let _high = rustix::io::fcntl_dupfd_cloexec(&read, 600).unwrap();
        let program = ProgramHandle::open(Path::new("/bin/true"), false).unwrap();
        let req = SpawnRequest {
            program: &program,
            args: &[],
            env: &BTreeMap::new(),
            work_dir: Some(Path::new("/")),
            run_as: None,
            rlimits: StartRlimits::capture(),
            null_stdin: false,
        };
        let slot = SpawnThreadSlot::default();
        let child = spawn(req, &slot).expect("spawn");
        assert!(child.spawned_by.is_some(), "created on the spawn thread");
        let exit =
            rustix::process::waitid(WaitId::PidFd(child.pidfd.as_fd()), WaitIdOptions::EXITED);
        assert_eq!(exit.unwrap().unwrap().exit_status(), Some(0));
    }
}
