//! SSH into VMs with the system OpenSSH: `banger vm ssh`, `banger
//! ssh-config --install|--uninstall`, and the hidden `banger
//! ssh-known-hosts` that OpenSSH calls (KnownHostsCommand) for the pinned
//! host keys, so nothing is trusted on first use and stale entries never
//! linger.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use banger_proto::methods::ssh::{Identity, KnownHosts};
use banger_proto::methods::vm::{Show, VmState};
use banger_proto::methods::{Empty, NameParams};
use banger_proto::ErrorKind;
use serde::Serialize;

use super::{guest_interrupt, Env};
use crate::client::Client;
use crate::error::{refuse, usage, Refusal};
use crate::render::{self, Outcome, Render};

/// `~/.config/banger/ssh` (or `$XDG_CONFIG_HOME/banger/ssh`).
pub fn user_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".config"),
    };
    Ok(base.join("banger").join("ssh"))
}

/// Writes the caller's private key (0600) where OpenSSH reads it; returns its path.
fn install_identity(client: &mut Client) -> anyhow::Result<PathBuf> {
    let id = client.call::<Identity>(&Empty {})?;
    let dir = user_dir()?;
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let key = dir.join("id_ed25519");
    if std::fs::read_to_string(&key).ok().as_deref() != Some(id.private_key.as_str()) {
        let tmp = dir.join(".id_ed25519.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(id.private_key.as_bytes())?;
        std::fs::rename(&tmp, &key)?;
        std::fs::write(dir.join("id_ed25519.pub"), format!("{}\n", id.public_key))?;
    }
    Ok(key)
}

/// The command OpenSSH runs for known hosts: this binary, with the same home.
fn known_hosts_command(env: &Env) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let mut cmd = shell_quote(&exe.display().to_string());
    if let Some(home) = &env.paths.home {
        cmd.push_str(&format!(
            " --home {}",
            shell_quote(&home.display().to_string())
        ));
    }
    cmd.push_str(" ssh-known-hosts");
    Ok(cmd)
}

/// Quotes a word for a POSIX shell (bare when it is plainly safe); the one
/// quoting used for every line banger sends to a guest shell.
pub(crate) fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The command line the guest's shell runs for `vm ssh NAME -- ARGS...`.
/// OpenSSH joins its arguments with spaces and the remote shell splits them
/// again, so `sh -c 'echo a; echo b'` or a file name with a space would be
/// re-interpreted there (and quoting bugs become injection). Several
/// arguments are therefore an argv, each quoted for the remote shell, as
/// with `docker exec`; one argument is a shell command line, as with
/// `ssh host 'cd src && make'`.
fn remote_command(args: &[String]) -> Option<String> {
    match args {
        [] => None,
        [line] => Some(line.clone()),
        argv => Some(
            argv.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        ),
    }
}

/// `vm ssh --json NAME -- CMD`: what the guest command did.
#[derive(Serialize)]
struct Ran {
    name: String,
    command: Vec<String>,
    exit_code: u8,
    stdout: String,
    stderr: String,
}

impl Render for Ran {
    fn text(&self) -> String {
        self.stdout.clone()
    }

    /// The guest command's own status, unchanged.
    fn status(&self) -> u8 {
        self.exit_code
    }
}

/// An `ssh` command line to a running VM as root, with banger's key and the
/// VM's pinned host key; no remote command yet. Fails with `invalid_state`
/// when the VM is not running or has no network.
pub(crate) fn ssh_to(env: &Env, name: &str) -> anyhow::Result<Command> {
    let mut client = env.client()?;
    let vm = client.call::<Show>(&NameParams { name: name.into() })?;
    if vm.state == VmState::Paused {
        return Err(Refusal {
            kind: ErrorKind::InvalidState,
            message: format!(
                "vm {name:?} is paused: its vCPUs are frozen, so nothing in it answers"
            ),
            hint: Some(format!("resume it: banger vm resume {name}")),
        }
        .into());
    }
    if vm.state.as_str() != "running" {
        return Err(refuse(
            ErrorKind::InvalidState,
            format!(
                "vm {name:?} is {}; start it first (banger vm start {name})",
                vm.state.as_str()
            ),
        ));
    }
    let Some(net) = vm.network else {
        return Err(refuse(
            ErrorKind::InvalidState,
            format!("vm {name:?} has no network, so no SSH"),
        ));
    };
    let key = install_identity(&mut client)?;
    drop(client);
    let mut ssh = Command::new("ssh");
    ssh.arg("-i")
        .arg(&key)
        .args(["-o", "IdentitiesOnly=yes"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .arg("-o")
        .arg(format!("KnownHostsCommand={}", known_hosts_command(env)?))
        .args(["-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("HostKeyAlias={}", net.dns_name))
        .args(["-o", "LogLevel=ERROR"])
        // A guest that dies or hangs mid-command ends the session within
        // ~15 s with "server not responding" instead of hanging forever.
        .args(["-o", "ConnectTimeout=10"])
        .args(["-o", "ServerAliveInterval=5"])
        .args(["-o", "ServerAliveCountMax=3"])
        .arg(format!("root@{}", net.ip));
    Ok(ssh)
}

pub(super) const CANNOT_RUN_SSH: &str = "cannot run ssh (install openssh-client)";

/// Runs `ssh` (stdio inherited, or captured for `--json`) and returns the
/// outcome: the remote command's exit status, unchanged.
fn run_ssh(env: &Env, mut ssh: Command, name: &str, command: &[String]) -> anyhow::Result<Outcome> {
    if env.json {
        let out = ssh.stdin(Stdio::null()).output().context(CANNOT_RUN_SSH)?;
        return Ok(Outcome::of(Ran {
            name: name.into(),
            command: command.to_vec(),
            exit_code: super::exit_status(out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }));
    }
    // Ctrl-C belongs to the guest command (ssh forwards or exits on it);
    // this process waits for ssh's status instead of dying first.
    let _ctrl_c = crate::progress::Interrupt::install()?;
    let status = ssh.status().context(CANNOT_RUN_SSH)?;
    Ok(Outcome::Streamed(super::exit_status(status)))
}

/// `banger vm ssh NAME [-- CMD...]`: runs ssh and ends with its exit
/// status, which is the remote command's (255: ssh itself failed). With
/// `--json` (a command is then required) the output is captured into
/// `{"name", "command", "exit_code", "stdout", "stderr"}`.
pub fn vm_ssh(env: &Env, name: &str, command: &[String]) -> anyhow::Result<Outcome> {
    if env.json && command.is_empty() {
        return Err(usage(
            "an interactive shell has no JSON form: give a command (banger --json vm ssh NAME -- CMD...)",
        ));
    }
    let mut ssh = ssh_to(env, name)?;
    if let Some(line) = remote_command(command) {
        ssh.arg("--").arg(line);
    }
    run_ssh(env, ssh, name, command)
}

/// `banger vm exec NAME [-w DIR] [-e K=V]... [-t|-T] [-u USER] -- CMD ARGS...`:
/// like `docker exec`, the command is an argv (never re-split by a shell),
/// stdin is forwarded, stdout and stderr stay apart, and the exit status is
/// the command's (a signal death is 128+N, as shells say).
pub fn vm_exec(env: &Env, a: super::vm::ExecArgs) -> anyhow::Result<Outcome> {
    for kv in &a.stream.env {
        check_env(kv)?;
    }
    let body = exec_body(
        &a.command,
        a.workdir.as_deref(),
        &a.stream.env,
        a.user.as_deref(),
    );
    if a.stream.detach {
        return super::attach::start(env, &a.name, &exec_line(&body));
    }
    let tty = if a.stream.tty {
        true
    } else if a.stream.no_tty || env.json {
        false
    } else {
        use std::io::IsTerminal;
        std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
    };
    let mut ssh = ssh_to(env, &a.name)?;
    if tty || env.json {
        // -tt: a terminal even when ssh's own stdin is not one (`-t`
        // forced); Ctrl-C then reaches the guest through its pty.
        ssh.arg(if tty { "-tt" } else { "-T" });
        ssh.arg("--").arg(exec_line(&body));
        return run_ssh(env, ssh, &a.name, &a.command);
    }
    let marker = guest_interrupt::Marker::new();
    ssh.args(["-T", "--"]).arg(marker.wrap(&body));
    let interrupt = || -> anyhow::Result<Command> {
        let mut c = ssh_to(env, &a.name)?;
        c.args(["-T", "--"]).arg(marker.interrupt_line());
        Ok(c)
    };
    guest_interrupt::run(ssh, &interrupt, &a.name)
}

/// `KEY=VALUE` with a shell-variable name.
fn check_env(kv: &str) -> anyhow::Result<()> {
    let key = kv.split_once('=').map(|(k, _)| k);
    let ok = key.is_some_and(|k| {
        !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    if ok {
        Ok(())
    } else {
        Err(usage(format!(
            "-e {kv:?}: expected KEY=VALUE with KEY made of letters, digits and '_'"
        )))
    }
}

/// The line the guest's shell runs for `vm exec`: every word quoted, so
/// nothing is re-split or expanded there. The command does not replace the
/// shell (`; exit $?` after it), so a signal death comes back as 128+N
/// rather than as ssh's 255.
fn exec_line(body: &str) -> String {
    format!("{body}; exit $?")
}

/// [`exec_line`] without its final `exit`.
fn exec_body(
    command: &[String],
    workdir: Option<&str>,
    env: &[String],
    user: Option<&str>,
) -> String {
    let mut words: Vec<String> = Vec::new();
    if let Some(user) = user {
        words.extend(["runuser", "-u"].map(String::from));
        words.push(shell_quote(user));
        words.push("--".into());
    }
    words.extend(["env", "--"].map(String::from));
    words.extend(env.iter().map(|kv| shell_quote(kv)));
    words.extend(command.iter().map(|w| shell_quote(w)));
    let run = words.join(" ");
    match workdir {
        Some(dir) => format!("cd -- {} && {run}", shell_quote(dir)),
        None => run,
    }
}

/// `banger ssh-known-hosts`: what OpenSSH's KnownHostsCommand prints.
pub fn known_hosts(env: &Env) -> anyhow::Result<Outcome> {
    let mut client = crate::autostart::connect(&env.paths, false)?;
    let hosts = client.call::<KnownHosts>(&Empty {})?;
    let text = hosts.text.clone();
    Ok(Outcome::of(render::Said { value: hosts, text }))
}

/// `ssh-config --install|--uninstall`.
#[derive(Serialize)]
struct SshConfig {
    installed: bool,
    /// `~/.ssh/config`.
    user_config: PathBuf,
    /// banger's own file with `Host *.vm`.
    include: PathBuf,
}

impl Render for SshConfig {
    fn text(&self) -> String {
        if self.installed {
            format!(
                "~/.ssh/config includes {} (Host *.vm)\n",
                self.include.display()
            )
        } else {
            "removed banger's Include from ~/.ssh/config\n".into()
        }
    }
}

const BEGIN: &str = "# >>> banger (managed by `banger ssh-config`) >>>";
const END: &str = "# <<< banger <<<";

/// `banger ssh-config --install|--uninstall`: an `Include` of banger's own
/// file for `Host *.vm` at the top of ~/.ssh/config, between marker lines;
/// nothing else in that file is touched, and running it twice changes nothing.
pub fn ssh_config(env: &Env, install: bool) -> anyhow::Result<Outcome> {
    let home = PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?);
    let user_config = home.join(".ssh").join("config");
    let ours = user_dir()?.join("config");
    let current = std::fs::read_to_string(&user_config).unwrap_or_default();
    let stripped = strip_block(&current);
    if install {
        let mut client = env.client()?;
        let key = install_identity(&mut client)?;
        std::fs::write(
            &ours,
            format!(
                "# Written by `banger ssh-config --install`.\n\
                 Host *.vm\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile /dev/null\n  KnownHostsCommand {cmd}\n  StrictHostKeyChecking yes\n",
                key = key.display(),
                cmd = known_hosts_command(env)?
            ),
        )?;
        let block = format!("{BEGIN}\nInclude {}\n{END}\n", ours.display());
        write_config(&user_config, &format!("{block}{stripped}"))?;
    } else {
        if stripped != current {
            write_config(&user_config, &stripped)?;
        }
        let _ = std::fs::remove_file(&ours);
    }
    Ok(Outcome::of(SshConfig {
        installed: install,
        user_config,
        include: ours,
    }))
}

/// The config without banger's block.
fn strip_block(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        match line.trim_end() {
            l if l == BEGIN => inside = true,
            l if l == END && inside => inside = false,
            _ if inside => {}
            _ => out.push_str(line),
        }
    }
    out
}

fn write_config(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().expect("a file in ~/.ssh");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(".config.banger-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod exec_tests {
    use super::*;

    fn words(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exec_line_quotes_every_word() {
        let line = exec_line(&exec_body(
            &words(&["printf", "%s\\n", "a b", "it's", "$HOME", "-x"]),
            Some("/root/my repo"),
            &words(&["FOO=a b"]),
            None,
        ));
        assert_eq!(
            line,
            "cd -- '/root/my repo' && env -- 'FOO=a b' printf '%s\\n' 'a b' 'it'\\''s' '$HOME' -x; exit $?"
        );
        let line = exec_line(&exec_body(&words(&["id"]), None, &[], Some("nobody")));
        assert_eq!(line, "runuser -u nobody -- env -- id; exit $?");
    }

    #[test]
    fn env_needs_a_name() {
        check_env("A_1=x y").unwrap();
        check_env("A=").unwrap();
        for bad in ["=x", "1A=x", "A-B=x", "A", "A B=x"] {
            assert!(check_env(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_is_removed_and_nothing_else() {
        let text = format!("Host a\n  User x\n{BEGIN}\nInclude /x\n{END}\nHost b\n");
        assert_eq!(strip_block(&text), "Host a\n  User x\nHost b\n");
        assert_eq!(strip_block("Host a\n"), "Host a\n");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/banger"), "/usr/bin/banger");
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn remote_command_is_an_argv_or_one_line() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(remote_command(&[]), None);
        assert_eq!(
            remote_command(&v(&["cd /src && make"])).unwrap(),
            "cd /src && make"
        );
        assert_eq!(
            remote_command(&v(&["sh", "-c", "echo $HOME; echo it's"])).unwrap(),
            "sh -c 'echo $HOME; echo it'\\''s'"
        );
        assert_eq!(
            remote_command(&v(&["ls", "-la", "/tmp/a b"])).unwrap(),
            "ls -la '/tmp/a b'"
        );
    }
}
