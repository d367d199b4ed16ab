//! What both binaries do alike at their edges: one error style (`error: ` and the cause
//! chain, never a backtrace: user errors are not bugs), and output that survives a closed
//! pipe (`microunify inspect F | head` ends quietly instead of panicking in `println!`).

use std::io::{self, Write};

/// Runs a binary's body: sets up the process (see
/// [`crate::gpu::context::quiet_mesa_device_select`]), then prints an error as
/// `error: what: why: ...` and exits 1. An error caused by a closed stdout ends the
/// program quietly with status 0: the reader has all it wanted.
pub fn main(body: impl FnOnce() -> anyhow::Result<()>) -> ! {
    crate::gpu::context::quiet_mesa_device_select();
    match body() {
        Ok(()) => std::process::exit(0),
        Err(e) if is_broken_pipe(&e) => std::process::exit(0),
        Err(e) => {
            errln(format_args!("error: {e:#}"));
            std::process::exit(1)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Writes one line to stdout. A closed pipe ends the program quietly (status 0); any other
/// failure to write is an error that ends it with status 1.
pub fn outln(args: std::fmt::Arguments) {
    let mut out = io::stdout().lock();
    if let Err(e) = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        errln(format_args!("error: writing to stdout: {e}"));
        std::process::exit(1);
    }
}

/// Writes one line to stderr; a closed or failing stderr is ignored (progress and notes
/// are not worth stopping the work for).
pub fn errln(args: std::fmt::Arguments) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// `println!` that ends the program quietly on a closed pipe (see [`outln`]).
#[macro_export]
macro_rules! outln {
    () => { $crate::cli::outln(format_args!("")) };
    ($($arg:tt)*) => { $crate::cli::outln(format_args!($($arg)*)) };
}

/// `eprintln!` that ignores a closed stderr (see [`errln`]).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::cli::errln(format_args!($($arg)*)) };
}
