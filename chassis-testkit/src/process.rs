//! Child processes that never outlive the test.

use std::process::Child;

/// Kills (SIGKILL) and reaps its child when dropped, so a failed assertion never leaves a
/// service running after the test.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: Child) -> Self {
        Self { child: Some(child) }
    }

    /// The guarded child (`None` after [`ChildGuard::take`]).
    pub fn get_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// The child's process id, if it is still guarded.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Gives the child back unguarded (for a test that waits for it to exit on its own).
    pub fn take(&mut self) -> Option<Child> {
        self.child.take()
    }

    /// Kills the child now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
