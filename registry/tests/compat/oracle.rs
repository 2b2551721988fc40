//! The reference verdicts: `scripts/avro_oracle.py`, Apache Avro's Python port of Java's
//! `SchemaCompatibility`, run by the interpreter of the pinned reference environment.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::json;

use crate::Pair;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Verdict {
    Judged {
        compatible: bool,
        locations: Vec<String>,
        messages: Vec<String>,
        /// The unadjusted Python port would have said otherwise (see the script).
        port_differs: bool,
    },
    Rejected {
        error: String,
    },
}

/// One verdict per pair, in order.
pub fn judge(pairs: &[Pair]) -> Vec<Verdict> {
    let python = python();
    let script = workspace_root().join("scripts/avro_oracle.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the reference checker {} with {} (DHANMAN_PYTHON, else what \
                 scripts/python-env.sh prints): {e}",
                script.display(),
                python.display()
            )
        });
    let input: String = pairs
        .iter()
        .map(|pair| {
            format!(
                "{}\n",
                json!({"reader": pair.reader, "writer": pair.writer})
            )
        })
        .collect();
    // Written from another thread: the script answers while it reads, and a full stdout pipe
    // would otherwise block both sides.
    let mut stdin = child.stdin.take().expect("piped stdin");
    let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child
        .wait_with_output()
        .expect("the oracle runs to its end");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} {} failed ({}):\n{stderr}",
        python.display(),
        script.display(),
        output.status
    );
    feeder
        .join()
        .expect("feeder thread")
        .expect("pairs written to the oracle");

    let verdicts: Vec<Verdict> = String::from_utf8(output.stdout)
        .expect("UTF-8 answers")
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("oracle answered {line:?}: {e}"))
        })
        .collect();
    assert_eq!(
        verdicts.len(),
        pairs.len(),
        "one answer per pair; oracle stderr:\n{stderr}"
    );
    verdicts
}

/// `DHANMAN_PYTHON`, else the interpreter `scripts/python-env.sh` prepares. Not finding one is a
/// failure, not a skip: without the reference there is nothing to compare with.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("DHANMAN_PYTHON").filter(|python| !python.is_empty()) {
        return python.into();
    }
    let script = workspace_root().join("scripts/python-env.sh");
    let unavailable = |why: String| -> ! {
        panic!(
            "the compatibility differential test needs the reference checker, Python with the \
             `avro` package pinned in scripts/python-requirements.txt: set DHANMAN_PYTHON to such \
             an interpreter, or make {} work (it needs python3 with venv and access to PyPI); {why}",
            script.display()
        )
    };
    let output = match Command::new(&script).stderr(Stdio::inherit()).output() {
        Ok(output) => output,
        Err(e) => unavailable(format!("running it failed: {e}")),
    };
    if !output.status.success() {
        unavailable(format!("it exited with {}", output.status));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("DHANMAN_PYTHON="))
        .map(PathBuf::from)
        .unwrap_or_else(|| unavailable("it printed no DHANMAN_PYTHON= line".to_owned()))
}

pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the registry crate sits in the workspace")
}
