//! The front end of Warren's Dockerfile builder: Dockerfile text and build args in, a fully
//! resolved [`Plan`] out. The plan names the base image and, for each instruction after
//! `FROM`, what to do with every variable already substituted where Docker substitutes
//! them, so the builder only executes and never parses.
//!
//! The parser is hand-written: the Dockerfile crates on crates.io either stop at splitting
//! instructions (no `$VAR` / `${VAR:-default}` substitution, no ARG and ENV scoping) or hand
//! back words with their shell quoting already lost, so `COPY "my file" /dst/` or
//! `ENV A="x y" B=$A` cannot be resolved as Docker resolves them. The rules here follow the
//! Dockerfile reference and BuildKit's lexer.
//!
//! # What is accepted
//!
//! One stage: ARGs, exactly one `FROM` (`AS name` is accepted and ignored), then `RUN`, `CMD`,
//! `ENTRYPOINT`, `COPY`, `ADD`, `ENV`, `ARG`, `WORKDIR`, `USER`, `LABEL` and `EXPOSE`. Keywords
//! are case-insensitive; `# escape=` and `# syntax=` parser directives are read at the top.
//! Everything else is refused with the line it is on: other instructions, a second `FROM`,
//! heredocs, flags other than `--chown` and `--chmod` on `COPY`/`ADD` (so no `--from`,
//! `--link`, `RUN --mount`, `FROM --platform`), and `ADD` from a URL or git repository.
//!
//! # Variables
//!
//! `FROM` sees only the ARGs declared before it; those are not visible after it unless
//! declared again (`ARG NAME` without a default takes the value from before `FROM`). After
//! `FROM`, a word sees the ENV set so far (which wins) and the ARGs declared so far. A build arg
//! overrides the default of the ARG of its name; an ARG with neither is unset, and an unset
//! variable expands to nothing. `RUN`, `CMD` and `ENTRYPOINT` are not expanded (the shell
//! does it); a `RUN` gets the ARG values as its environment instead ([`Op::Run`]).

mod expand;
mod lex;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use expand::{expand, expand_with_escape};
use lex::{split_words, take_flags, Instruction};

/// A Dockerfile resolved for execution: the base image and the steps to run on it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The `FROM` image, its variables expanded (`scratch` for an empty base).
    pub base: String,
    /// One step per instruction after `FROM` (one per name for an `ARG` declaring several).
    pub steps: Vec<Step>,
}

/// One instruction of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based line where the instruction starts.
    pub line: usize,
    /// The instruction on one line, for build logs and as the build-cache key: the keyword and
    /// its arguments. For `RUN`, `CMD` and `ENTRYPOINT` the arguments as written (continuation
    /// lines joined as Docker joins them: escape character removed, nothing added). For the
    /// others they are rendered from the expanded values, double-quoted where a value has
    /// blanks, quotes, `\`, `` ` ``, `$` or is empty (`ENV A="x y"`), so the text changes
    /// whenever what the step does changes. The `env` of an [`Op::Run`] is not in the text: a
    /// cache key must add it.
    pub text: String,
    /// What to do.
    pub op: Op,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Run a command in the image being built.
    Run {
        /// Shell form: `["/bin/sh", "-c", command]`, the command not expanded. Exec form: the
        /// JSON array.
        argv: Vec<String>,
        /// The ARGs declared after `FROM` so far that have a value, in declaration order,
        /// without those an ENV of the same name shadows. Set for this command only, not kept
        /// in the image.
        env: Vec<(String, String)>,
    },
    /// Copy files from the build context (`COPY`, or `ADD`, which also unpacks local tar
    /// archives).
    Copy {
        /// Paths in the build context (wildcards are left to the builder).
        sources: Vec<String>,
        /// Destination in the image; relative to the working directory unless absolute. Ends
        /// with `/` when there are several sources.
        dest: String,
        /// `--chown=user[:group]`.
        chown: Option<String>,
        /// `--chmod=` (octal).
        chmod: Option<u32>,
        /// `ADD` rather than `COPY`.
        add: bool,
    },
    /// Set environment variables in the image, in the order given.
    Env(Vec<(String, String)>),
    /// Set the working directory: always absolute (a relative `WORKDIR` is joined to the
    /// previous one, starting at `/`) and normalized (no `.`, `..` or trailing `/`).
    Workdir(String),
    /// Set the user (`user[:group]`).
    User(String),
    /// Set image labels, in the order given.
    Label(Vec<(String, String)>),
    /// Declare exposed ports, as `port/protocol` (`80/tcp`; a range is listed port by port).
    Expose(Vec<String>),
    /// Set the default command. Shell form becomes `["/bin/sh", "-c", command]`.
    Cmd(Vec<String>),
    /// Set the entrypoint. Shell form becomes `["/bin/sh", "-c", command]`.
    Entrypoint(Vec<String>),
    /// An `ARG` declared after `FROM`: nothing to do (its value goes to later `RUN`s), but it
    /// appears in the build log.
    Arg {
        /// The variable declared.
        name: String,
    },
}

/// Why a Dockerfile cannot be planned, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct DockerfileError {
    /// 1-based line of the instruction (or directive) at fault; for a missing `FROM`, the last
    /// line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Plans `text` with `build_args` (the `--build-arg` values), as if the base image had no
/// environment. See [`plan_with_base_env`].
pub fn plan(text: &str, build_args: &BTreeMap<String, String>) -> Result<Plan, DockerfileError> {
    plan_with_base_env(text, build_args, &[])
}

/// Plans `text` with `build_args`, `base_env` being the environment of the base image: a
/// Dockerfile sees it, as in `ENV PATH=/app/bin:$PATH`. A builder can call [`plan`] to learn
/// the base image, then this with the environment from its config.
pub fn plan_with_base_env(
    text: &str,
    build_args: &BTreeMap<String, String>,
    base_env: &[(String, String)],
) -> Result<Plan, DockerfileError> {
    let (escape, instructions) = lex::instructions(text)?;
    let mut resolver = Resolver {
        escape,
        build_args,
        global_args: Vec::new(),
        base: None,
        env: base_env.to_vec(),
        args: Vec::new(),
        workdir: "/".into(),
        steps: Vec::new(),
    };
    for instruction in &instructions {
        resolver
            .instruction(instruction)
            .map_err(|message| DockerfileError {
                line: instruction.line,
                message,
            })?;
    }
    let base = resolver.base.ok_or_else(|| DockerfileError {
        line: text.lines().count().max(1),
        message: "no FROM instruction".into(),
    })?;
    let steps = resolver.steps;
    Ok(Plan { base, steps })
}

const SUPPORTED: &str = "FROM RUN CMD ENTRYPOINT COPY ADD ENV ARG WORKDIR USER LABEL EXPOSE";

/// The state while walking the instructions.
struct Resolver<'a> {
    escape: char,
    build_args: &'a BTreeMap<String, String>,
    /// ARGs declared before `FROM` (`None`: no value).
    global_args: Vec<(String, Option<String>)>,
    /// Set by `FROM`.
    base: Option<String>,
    /// The image's environment so far, one entry per name.
    env: Vec<(String, String)>,
    /// ARGs declared after `FROM`, in declaration order (`None`: no value).
    args: Vec<(String, Option<String>)>,
    workdir: String,
    steps: Vec<Step>,
}

impl Resolver<'_> {
    fn instruction(&mut self, instruction: &Instruction) -> Result<(), String> {
        let kw = instruction.keyword.as_str();
        if !SUPPORTED.split(' ').any(|supported| supported == kw) {
            return Err(format!("{kw} is not supported"));
        }
        match (kw, self.base.is_some()) {
            ("FROM", true) => {
                return Err("multi-stage builds are not supported (a second FROM)".into())
            }
            ("FROM" | "ARG", _) | (_, true) => {}
            (_, false) => return Err(format!("{kw} before FROM (only ARG may come before it)")),
        }
        let (flags, args) = take_flags(&instruction.args);
        let allowed: &[&str] = match kw {
            "COPY" | "ADD" => &["chown", "chmod"],
            _ => &[],
        };
        if let Some((name, _)) = flags
            .iter()
            .find(|(name, _)| !allowed.contains(&name.as_str()))
        {
            return Err(format!("{kw} --{name} is not supported"));
        }
        if args.is_empty() {
            return Err(format!("{kw} requires arguments"));
        }
        let line = instruction.line;
        match kw {
            "FROM" => self.from(args)?,
            "ARG" => self.arg(line, args)?,
            "RUN" => self.run(line, args)?,
            "CMD" | "ENTRYPOINT" => {
                let argv = exec_form(args)?.unwrap_or_else(|| shell_form(args));
                let op = if kw == "CMD" { Op::Cmd } else { Op::Entrypoint };
                self.push(line, format!("{kw} {args}"), op(argv));
            }
            "COPY" | "ADD" => self.copy(line, kw, &flags, args)?,
            "ENV" | "LABEL" => {
                let pairs = self.pairs(kw, args)?;
                let text = format!(
                    "{kw} {}",
                    pairs.iter().map(pair).collect::<Vec<_>>().join(" ")
                );
                if kw == "LABEL" {
                    self.push(line, text, Op::Label(pairs));
                } else {
                    for (name, value) in &pairs {
                        set(&mut self.env, name.clone(), value.clone());
                    }
                    self.push(line, text, Op::Env(pairs));
                }
            }
            "WORKDIR" => {
                let dir = self.expand_nonempty(kw, args)?;
                self.workdir = clean_path(&if dir.starts_with('/') {
                    dir.clone()
                } else {
                    format!("{}/{dir}", self.workdir)
                });
                let op = Op::Workdir(self.workdir.clone());
                self.push(line, format!("{kw} {}", quote(&dir)), op);
            }
            "USER" => {
                let user = self.expand_nonempty(kw, args)?;
                self.push(line, format!("{kw} {}", quote(&user)), Op::User(user));
            }
            "EXPOSE" => {
                let mut specs = Vec::new();
                for word in split_words(args, self.escape) {
                    specs.extend(self.expand(&word)?.split_whitespace().map(String::from));
                }
                let ports = specs
                    .iter()
                    .map(|spec| expose_ports(spec))
                    .collect::<Result<Vec<_>, _>>()?;
                if specs.is_empty() {
                    return Err("EXPOSE requires at least one port".into());
                }
                let op = Op::Expose(ports.concat());
                self.push(line, format!("{kw} {}", specs.join(" ")), op);
            }
            _ => return Err(format!("{kw} is not supported")),
        }
        Ok(())
    }

    fn push(&mut self, line: usize, text: String, op: Op) {
        self.steps.push(Step { line, text, op });
    }

    /// A variable's value: before `FROM`, among the ARGs declared so far; after, in the ENV,
    /// then among the ARGs declared after `FROM`.
    fn lookup(&self, name: &str) -> Option<String> {
        match self.base {
            None => get(&self.global_args, name).flatten(),
            Some(_) => get(&self.env, name).or_else(|| get(&self.args, name).flatten()),
        }
    }

    fn expand(&self, word: &str) -> Result<String, String> {
        expand_with_escape(word, self.escape, &|name| self.lookup(name))
            .map_err(|e| format!("cannot expand {word:?}: {e}"))
    }

    fn expand_nonempty(&self, kw: &str, word: &str) -> Result<String, String> {
        let value = self.expand(word)?;
        if value.is_empty() {
            return Err(format!("{kw} {word} is empty once expanded"));
        }
        Ok(value)
    }

    fn from(&mut self, args: &str) -> Result<(), String> {
        let words = split_words(args, self.escape);
        let image = match words.as_slice() {
            [image] => image,
            [image, as_, _] if as_.eq_ignore_ascii_case("as") => image,
            _ => return Err("FROM takes an image and optionally AS name".into()),
        };
        self.base = Some(self.expand_nonempty("FROM", image)?);
        Ok(())
    }

    fn arg(&mut self, line: usize, args: &str) -> Result<(), String> {
        for word in split_words(args, self.escape) {
            let (name, default) = match word.split_once('=') {
                Some((name, default)) => (name.to_string(), Some(self.expand(default)?)),
                None => (word, None),
            };
            if name.is_empty() {
                return Err("ARG names can not be blank".into());
            }
            let value = (self.build_args.get(&name).cloned())
                .or_else(|| default.clone())
                .or_else(|| match self.base {
                    Some(_) => get(&self.global_args, &name).flatten(),
                    None => None,
                });
            if self.base.is_none() {
                set(&mut self.global_args, name, value);
                continue;
            }
            let default_text = default.as_deref().map(|d| format!("={}", quote(d)));
            let text = format!("ARG {}{}", quote(&name), default_text.unwrap_or_default());
            set(&mut self.args, name.clone(), value);
            self.push(line, text, Op::Arg { name });
        }
        Ok(())
    }

    fn run(&mut self, line: usize, args: &str) -> Result<(), String> {
        let argv = match exec_form(args)? {
            Some(argv) if argv.is_empty() => return Err("RUN requires a command".into()),
            Some(argv) => argv,
            None => {
                no_heredoc("RUN", args, self.escape)?;
                shell_form(args)
            }
        };
        let env = (self.args.iter())
            .filter(|(name, _)| get(&self.env, name).is_none())
            .filter_map(|(name, value)| Some((name.clone(), value.clone()?)))
            .collect();
        self.push(line, format!("RUN {args}"), Op::Run { argv, env });
        Ok(())
    }

    fn copy(
        &mut self,
        line: usize,
        kw: &str,
        flags: &[(String, Option<String>)],
        args: &str,
    ) -> Result<(), String> {
        let words = match exec_form(args)? {
            Some(words) => words,
            None => {
                no_heredoc(kw, args, self.escape)?;
                split_words(args, self.escape)
            }
        };
        let mut sources = (words.iter())
            .map(|word| self.expand_nonempty(kw, word))
            .collect::<Result<Vec<_>, _>>()?;
        if sources.len() < 2 {
            return Err(format!("{kw} requires a source and a destination"));
        }
        let dest = sources.remove(sources.len() - 1);
        if sources.len() > 1 && !dest.ends_with('/') {
            return Err(format!(
                "{kw} with several sources needs a destination directory ending in /"
            ));
        }
        let remote = ["http://", "https://", "git://", "git@", "ssh://"];
        if let Some(source) =
            (sources.iter()).find(|s| remote.iter().any(|r| s.to_ascii_lowercase().starts_with(r)))
        {
            return Err(format!(
                "{kw} from a URL or git repository is not supported ({source}): \
                 only local files and local tar archives"
            ));
        }
        let (mut chown, mut chmod) = (None, None);
        for (name, value) in flags {
            let Some(value) = value else {
                return Err(format!("{kw} --{name} requires a value (--{name}=...)"));
            };
            if name == "chown" {
                chown = Some(self.expand_nonempty(kw, value)?);
            } else {
                chmod = Some(parse_mode(&self.expand(value)?)?);
            }
        }
        let mut words: Vec<String> = (chown.iter().map(|c| format!("--chown={}", quote(c))))
            .chain(chmod.map(|m| format!("--chmod={m:o}")))
            .collect();
        words.extend(sources.iter().chain([&dest]).map(|word| quote(word)));
        let text = format!("{kw} {}", words.join(" "));
        let add = kw == "ADD";
        let op = Op::Copy {
            sources,
            dest,
            chown,
            chmod,
            add,
        };
        self.push(line, text, op);
        Ok(())
    }

    /// The expanded `name=value` pairs of an ENV or LABEL, all expanded with the variables as
    /// they were before the instruction. ENV also has the legacy form `ENV name value...`.
    fn pairs(&self, kw: &str, args: &str) -> Result<Vec<(String, String)>, String> {
        let words = split_words(args, self.escape);
        let raw = match words.first() {
            Some(first) if !first.contains('=') => {
                let legacy = (kw == "ENV").then(|| args.split_once(char::is_whitespace));
                let Some((name, value)) = legacy.flatten() else {
                    return Err(format!("{kw} requires name=value pairs"));
                };
                vec![(name.to_string(), value.trim_start().to_string())]
            }
            _ => (words.iter())
                .map(|word| match word.split_once('=') {
                    Some((name, value)) => Ok((name.to_string(), value.to_string())),
                    None => Err(format!("{kw}: no = in {word:?}, expected name=value")),
                })
                .collect::<Result<_, _>>()?,
        };
        (raw.iter())
            .map(|(name, value)| {
                let name = self.expand(name)?;
                if name.is_empty() {
                    return Err(format!("{kw} names can not be blank"));
                }
                Ok((name, self.expand(value)?))
            })
            .collect()
    }
}

fn get<V: Clone>(list: &[(String, V)], name: &str) -> Option<V> {
    list.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

/// Sets `name` in place, or appends it.
fn set<V>(list: &mut Vec<(String, V)>, name: String, value: V) {
    match list.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => list.push((name, value)),
    }
}

/// Exec form: the arguments parse as a JSON array of strings. Anything that is not JSON is
/// shell form (Docker's rule); a JSON array of something else is an error.
fn exec_form(args: &str) -> Result<Option<Vec<String>>, String> {
    if !args.starts_with('[') {
        return Ok(None);
    }
    let Ok(items) = serde_json::from_str::<Vec<serde_json::Value>>(args) else {
        return Ok(None);
    };
    (items.into_iter())
        .map(|item| match item {
            serde_json::Value::String(s) => Ok(s),
            _ => Err("a JSON array (exec form) must contain only strings".into()),
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

fn shell_form(command: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), command.into()]
}

/// Refuses `<<EOF`, `<<-EOF`, `<<"EOF"` (`<<` alone and `<<<` are shell syntax).
fn no_heredoc(kw: &str, args: &str, escape: char) -> Result<(), String> {
    let heredoc = split_words(args, escape).iter().any(|word| {
        let rest = word.trim_start_matches(|c: char| c.is_ascii_digit());
        let rest = rest
            .strip_prefix("<<")
            .map(|r| r.strip_prefix('-').unwrap_or(r));
        rest.is_some_and(|r| !r.is_empty() && !r.contains('<'))
    });
    if heredoc {
        return Err(format!("heredocs (<<EOF) are not supported in {kw}"));
    }
    Ok(())
}

fn parse_mode(mode: &str) -> Result<u32, String> {
    let octal = !mode.is_empty() && mode.len() <= 5 && mode.chars().all(|c| matches!(c, '0'..='7'));
    (u32::from_str_radix(mode, 8).ok())
        .filter(|m| octal && *m <= 0o7777)
        .ok_or_else(|| format!("invalid --chmod={mode}: expected an octal mode such as 755"))
}

/// `spec` (`80`, `80/udp`, `8000-8002/tcp`) as `port/protocol` entries.
fn expose_ports(spec: &str) -> Result<Vec<String>, String> {
    let (range, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let proto = proto.to_ascii_lowercase();
    let (start, end) = range.split_once('-').unwrap_or((range, range));
    match (start.parse::<u16>(), end.parse::<u16>()) {
        (Ok(start), Ok(end)) if start <= end && ["tcp", "udp", "sctp"].contains(&&*proto) => {
            Ok((start..=end)
                .map(|port| format!("{port}/{proto}"))
                .collect())
        }
        _ => Err(format!(
            "invalid port {spec:?}: expected PORT[/PROTOCOL] or START-END[/PROTOCOL], \
             PROTOCOL being tcp, udp or sctp"
        )),
    }
}

/// `path` (absolute) without empty, `.` and `..` components.
fn clean_path(path: &str) -> String {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `name=value` for a step's text.
fn pair((name, value): &(String, String)) -> String {
    let name = if name.contains('=') {
        quoted(name)
    } else {
        quote(name)
    };
    format!("{name}={}", quote(value))
}

/// `word` as is, or double-quoted when it is empty or has characters that would make the step
/// text ambiguous.
fn quote(word: &str) -> String {
    let special = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '`' | '$');
    if word.is_empty() || word.contains(special) {
        quoted(word)
    } else {
        word.to_string()
    }
}

fn quoted(word: &str) -> String {
    format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
}
