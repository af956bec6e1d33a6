//! The dropped-lines count reaches the Prometheus exposition. It uses the global `metrics`
//! recorder (the writer thread records into it), so it is a test binary of its own.

use std::io::{self, Write};
use std::sync::mpsc;
use std::time::Duration;

use chassis_observability::config::MetricsConfig;
use chassis_observability::logging::BatchWriter;
use chassis_observability::metrics::build_recorder;

/// Blocks its first write until told to go on.
struct Stuck {
    entered: mpsc::Sender<()>,
    go: Option<mpsc::Receiver<()>>,
}

impl Write for Stuck {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(go) = self.go.take() {
            let _ = self.entered.send(());
            let _ = go.recv();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn dropped_lines_are_exported_as_log_lines_dropped() {
    let recorder = build_recorder(&MetricsConfig::default()).unwrap();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();
    chassis_observability::metrics::describe_all();

    let (entered_tx, entered) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let (writer, guard) = BatchWriter::builder()
        .lines_limit(2)
        .interval(Duration::ZERO)
        .spawn(Stuck {
            entered: entered_tx,
            go: Some(go_rx),
        })
        .unwrap();
    writer.write_line(b"taken\n");
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    for _ in 0..5 {
        writer.write_line(b"line\n");
    }
    go.send(()).unwrap();
    guard.shutdown(Duration::from_secs(10)).unwrap();

    let text = handle.render();
    assert!(text.contains("log_lines_dropped_total 3"), "{text}");
    assert!(text.contains("# HELP log_lines_dropped_total"), "{text}");
}
