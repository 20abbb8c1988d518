//! CPU hogs: busy-looping processes that make the machine as loaded as a busy
//! CI runner, for tests whose guarantees must hold whatever the scheduler does.

use std::process::{Child, Command, Stdio};

/// Busy loops, one process each, killed (by PID) when dropped. Each also stops
/// by itself after `limit_secs`, so an aborted test leaves nothing spinning.
pub struct CpuHogs(Vec<Child>);

impl CpuHogs {
    pub fn start(count: usize, limit_secs: u32) -> Self {
        let hogs = (0..count)
            .map(|_| {
                // A shell arithmetic loop that looks at the clock every 100k
                // rounds: killed directly by PID, no wrapper to orphan it.
                let script = format!(
                    "end=$(( $(date +%s) + {limit_secs} )); \
                     while [ $(date +%s) -lt $end ]; do \
                       i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; \
                     done"
                );
                Command::new("sh")
                    .args(["-c", &script])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("cannot start a CPU hog (`sh` is needed)")
            })
            .collect();
        Self(hogs)
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for hog in &mut self.0 {
            let _ = hog.kill();
            let _ = hog.wait();
        }
    }
}
