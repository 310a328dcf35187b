use super::*;

fn build_args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ok(text: &str) -> Plan {
    plan(text, &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn ok_with(text: &str, args: &[(&str, &str)]) -> Plan {
    plan(text, &build_args(args)).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[track_caller]
fn err_at(text: &str, line: usize, needle: &str) {
    let e = plan(text, &BTreeMap::new()).expect_err(text);
    assert_eq!(e.line, line, "{e}\n{text}");
    assert!(e.message.contains(needle), "{e:?} lacks {needle:?}\n{text}");
}

fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sh(command: &str) -> Vec<String> {
    strs(&["/bin/sh", "-c", command])
}

fn ops(plan: &Plan) -> Vec<Op> {
    plan.steps.iter().map(|s| s.op.clone()).collect()
}

fn texts(plan: &Plan) -> Vec<String> {
    plan.steps.iter().map(|s| s.text.clone()).collect()
}

fn step(line: usize, text: &str, op: Op) -> Step {
    Step {
        line,
        text: text.into(),
        op,
    }
}

fn run(command: &str, env: &[(&str, &str)]) -> Op {
    Op::Run {
        argv: sh(command),
        env: kv(env),
    }
}

fn copy(sources: &[&str], dest: &str) -> Op {
    Op::Copy {
        sources: strs(sources),
        dest: dest.into(),
        chown: None,
        chmod: None,
        add: false,
    }
}

const REALISTIC: &str = r#"# syntax=docker/dockerfile:1
ARG PYTHON_VERSION=3.12
ARG VARIANT=slim
FROM python:${PYTHON_VERSION}-${VARIANT} AS app

ARG VERSION=1.0.0
ARG PIP_INDEX_URL
LABEL org.opencontainers.image.title="Warren demo" \
      org.opencontainers.image.version=$VERSION
ENV APP_HOME=/srv/app \
    PYTHONUNBUFFERED=1
WORKDIR $APP_HOME
# system packages
RUN apt-get update && \
    # comment inside the continuation
    apt-get install -y --no-install-recommends curl && \
    rm -rf /var/lib/apt/lists/*
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY --chown=app:app --chmod=0644 src/ ./src/
ADD vendor.tar.gz /opt/vendor/
RUN useradd --create-home app
USER app:app
ENV PATH="$APP_HOME/bin:/usr/local/bin" VERSION=$VERSION
RUN echo "$VERSION" > /srv/app/VERSION
EXPOSE 8000 9000/udp
WORKDIR src
ENTRYPOINT ["python", "-m", "app"]
CMD ["--port", "8000"]
"#;

#[test]
fn realistic_dockerfile() {
    let index = ("PIP_INDEX_URL", "https://pypi.example/simple");
    let plan = ok_with(REALISTIC, &[("VARIANT", "bookworm"), index]);
    assert_eq!(plan.base, "python:3.12-bookworm");
    let args = [("VERSION", "1.0.0"), index];
    let apt = "apt-get update &&     apt-get install -y --no-install-recommends curl &&     \
               rm -rf /var/lib/apt/lists/*";
    let expected = vec![
        step(
            6,
            "ARG VERSION=1.0.0",
            Op::Arg {
                name: "VERSION".into(),
            },
        ),
        step(
            7,
            "ARG PIP_INDEX_URL",
            Op::Arg {
                name: "PIP_INDEX_URL".into(),
            },
        ),
        step(
            8,
            "LABEL org.opencontainers.image.title=\"Warren demo\" \
             org.opencontainers.image.version=1.0.0",
            Op::Label(kv(&[
                ("org.opencontainers.image.title", "Warren demo"),
                ("org.opencontainers.image.version", "1.0.0"),
            ])),
        ),
        step(
            10,
            "ENV APP_HOME=/srv/app PYTHONUNBUFFERED=1",
            Op::Env(kv(&[("APP_HOME", "/srv/app"), ("PYTHONUNBUFFERED", "1")])),
        ),
        step(12, "WORKDIR /srv/app", Op::Workdir("/srv/app".into())),
        step(14, &format!("RUN {apt}"), run(apt, &args)),
        step(
            18,
            "COPY requirements.txt ./",
            copy(&["requirements.txt"], "./"),
        ),
        step(
            19,
            "RUN pip install --no-cache-dir -r requirements.txt",
            run("pip install --no-cache-dir -r requirements.txt", &args),
        ),
        step(
            20,
            "COPY --chown=app:app --chmod=644 src/ ./src/",
            Op::Copy {
                sources: strs(&["src/"]),
                dest: "./src/".into(),
                chown: Some("app:app".into()),
                chmod: Some(0o644),
                add: false,
            },
        ),
        step(
            21,
            "ADD vendor.tar.gz /opt/vendor/",
            Op::Copy {
                sources: strs(&["vendor.tar.gz"]),
                dest: "/opt/vendor/".into(),
                chown: None,
                chmod: None,
                add: true,
            },
        ),
        step(
            22,
            "RUN useradd --create-home app",
            run("useradd --create-home app", &args),
        ),
        step(23, "USER app:app", Op::User("app:app".into())),
        step(
            24,
            "ENV PATH=/srv/app/bin:/usr/local/bin VERSION=1.0.0",
            Op::Env(kv(&[
                ("PATH", "/srv/app/bin:/usr/local/bin"),
                ("VERSION", "1.0.0"),
            ])),
        ),
        // VERSION is an ENV now: it no longer comes with the RUN.
        step(
            25,
            "RUN echo \"$VERSION\" > /srv/app/VERSION",
            run("echo \"$VERSION\" > /srv/app/VERSION", &[index]),
        ),
        step(
            26,
            "EXPOSE 8000 9000/udp",
            Op::Expose(strs(&["8000/tcp", "9000/udp"])),
        ),
        step(27, "WORKDIR src", Op::Workdir("/srv/app/src".into())),
        step(
            28,
            "ENTRYPOINT [\"python\", \"-m\", \"app\"]",
            Op::Entrypoint(strs(&["python", "-m", "app"])),
        ),
        step(
            29,
            "CMD [\"--port\", \"8000\"]",
            Op::Cmd(strs(&["--port", "8000"])),
        ),
    ];
    assert_eq!(plan.steps, expected);
}

#[test]
fn unsupported_instructions() {
    for (instruction, keyword) in [
        ("VOLUME /data", "VOLUME"),
        ("HEALTHCHECK CMD curl -f http://localhost/", "HEALTHCHECK"),
        ("SHELL [\"/bin/bash\", \"-c\"]", "SHELL"),
        ("STOPSIGNAL SIGTERM", "STOPSIGNAL"),
        ("ONBUILD RUN make", "ONBUILD"),
        ("MAINTAINER someone", "MAINTAINER"),
        ("frobnicate the widget", "FROBNICATE"),
    ] {
        let text = format!("FROM alpine\n\n{instruction}\n");
        err_at(&text, 3, &format!("{keyword} is not supported"));
    }
    // Even before FROM, the instruction is named.
    err_at("VOLUME /x\nFROM alpine\n", 1, "VOLUME is not supported");
}

#[test]
fn error_display_has_the_line() {
    let e = plan("FROM alpine\nVOLUME /x\n", &BTreeMap::new()).expect_err("refused");
    assert_eq!(e.to_string(), "line 2: VOLUME is not supported");
}

#[test]
fn structure_errors() {
    err_at("FROM alpine\nRUN true\nFROM busybox\n", 3, "multi-stage");
    err_at("FROM alpine AS a\nFROM a\n", 2, "multi-stage");
    err_at("", 1, "no FROM");
    err_at("# just a comment\nARG A=1\n\n", 3, "no FROM");
    err_at("RUN true\nFROM alpine\n", 1, "RUN before FROM");
    err_at("ARG A\nENV B=c\nFROM alpine\n", 2, "ENV before FROM");
    err_at("FROM a b\n", 1, "FROM takes an image");
    err_at("FROM a AS\n", 1, "FROM takes an image");
    err_at("FROM $NOTHING\n", 1, "empty once expanded");
}

#[test]
fn flag_errors() {
    for (instruction, needle) in [
        ("COPY --from=build /a /b", "COPY --from is not supported"),
        ("COPY --link a /b", "COPY --link is not supported"),
        ("COPY --parents a/b /c/", "COPY --parents is not supported"),
        (
            "ADD --checksum=sha256:00 a /b",
            "ADD --checksum is not supported",
        ),
        (
            "ADD --keep-git-dir=true a /b",
            "ADD --keep-git-dir is not supported",
        ),
        ("ADD --link a /b", "ADD --link is not supported"),
        (
            "RUN --mount=type=cache,target=/c make",
            "RUN --mount is not supported",
        ),
        ("RUN --network=none make", "RUN --network is not supported"),
        (
            "RUN --security=insecure make",
            "RUN --security is not supported",
        ),
        ("ENV --x=1 A=b", "ENV --x is not supported"),
        ("COPY --chown a /b", "--chown requires a value"),
    ] {
        err_at(&format!("FROM alpine\n{instruction}\n"), 2, needle);
    }
    err_at(
        "FROM --platform=linux/amd64 alpine\n",
        1,
        "FROM --platform is not supported",
    );
}

#[test]
fn argument_errors() {
    for (instruction, needle) in [
        ("RUN", "RUN requires arguments"),
        ("RUN   ", "RUN requires arguments"),
        ("CMD", "CMD requires arguments"),
        ("ENV", "ENV requires arguments"),
        ("COPY", "COPY requires arguments"),
        ("WORKDIR", "WORKDIR requires arguments"),
        ("COPY --chown=a:b", "COPY requires arguments"),
        ("COPY onlyone", "requires a source and a destination"),
        ("ADD [\"onlyone\"]", "requires a source and a destination"),
        ("COPY a b /dst", "ending in /"),
        ("COPY [\"a\", \"b\", \"/dst\"]", "ending in /"),
        ("COPY $NOPE /dst/", "empty once expanded"),
        ("COPY --chmod=999 a /b", "invalid --chmod=999"),
        ("COPY --chmod=u+x a /b", "invalid --chmod=u+x"),
        ("COPY --chmod=17777 a /b", "invalid --chmod=17777"),
        ("COPY --chmod= a /b", "invalid --chmod="),
        ("ADD https://example.com/a.tgz /a/", "URL or git repository"),
        ("ADD http://example.com/a /a", "URL or git repository"),
        ("ADD git@github.com:o/r.git /src/", "URL or git repository"),
        ("ADD HTTPS://EXAMPLE.COM/A /a", "URL or git repository"),
        ("COPY https://example.com/a /a", "URL or git repository"),
        ("RUN [\"echo\", 1]", "only strings"),
        ("RUN []", "RUN requires a command"),
        ("ENV A=1 B", "no = in \"B\""),
        ("ENV A", "ENV requires name=value"),
        ("ENV =x", "names can not be blank"),
        ("LABEL version 1", "LABEL requires name=value"),
        ("ARG =x", "ARG names can not be blank"),
        ("USER $NOPE", "empty once expanded"),
        ("EXPOSE 80/foo", "invalid port \"80/foo\""),
        ("EXPOSE http", "invalid port"),
        ("EXPOSE 90-80", "invalid port"),
        ("EXPOSE 70000", "invalid port"),
        ("EXPOSE $NOPE", "EXPOSE requires at least one port"),
        ("ENV A=\"unterminated", "matching double-quote"),
        ("LABEL a='unterminated", "matching single-quote"),
        ("WORKDIR ${}", "bad substitution"),
        ("WORKDIR ${A", "missing '}'"),
        ("WORKDIR ${A#x}", "unsupported modifier (#)"),
        ("USER ${U:?must be set}", "U: must be set"),
    ] {
        err_at(&format!("FROM alpine\n{instruction}\n"), 2, needle);
    }
}

#[test]
fn heredocs_are_refused() {
    err_at("FROM alpine\nRUN <<EOF\necho hi\nEOF\n", 2, "heredocs");
    err_at(
        "FROM alpine\nRUN cat <<-'END' > /f\n",
        2,
        "are not supported in RUN",
    );
    err_at("FROM alpine\nRUN python3 2<<\"EOF\"\n", 2, "heredocs");
    err_at(
        "FROM alpine\nCOPY <<EOF /etc/motd\n",
        2,
        "are not supported in COPY",
    );
    // Shell syntax that is not a heredoc.
    let plan = ok("FROM alpine\nRUN echo $((1 << 2))\nRUN cat <<< \"x\"\nRUN echo \"<<EOF\"\n");
    assert_eq!(plan.steps.len(), 3);
}

#[test]
fn error_lines_count_continuations_and_comments() {
    let text =
        "FROM alpine\n\n# comment\nRUN a \\\n  # inside\n  b \\\n\n  c\nENV A=1\nVOLUME /x\n";
    err_at(text, 10, "VOLUME");
    let plan = ok("FROM alpine\n\n# comment\nRUN a \\\n  # inside\n  b \\\n\n  c\nENV A=1\n");
    assert_eq!(plan.steps[0].line, 4);
    assert_eq!(plan.steps[1].line, 9);
}

#[test]
fn continuations() {
    let text = "FROM alpine\n\
                RUN echo one \\\n\
                # a comment in the middle\n\
                \x20   two \\  \n\
                \n\
                \x20   three\n\
                ENV A=1 \\\n\
                \x20 # another\n\
                \x20 B=2\n\
                RUN echo foo\\\n\
                bar\n\
                RUN echo last \\\n";
    let plan = ok(text);
    assert_eq!(
        ops(&plan),
        vec![
            run("echo one     two     three", &[]),
            Op::Env(kv(&[("A", "1"), ("B", "2")])),
            run("echo foobar", &[]),
            // A continuation at the end of the file ends the instruction.
            run("echo last", &[]),
        ]
    );
    let lines: Vec<usize> = plan.steps.iter().map(|s| s.line).collect();
    assert_eq!(lines, vec![2, 7, 10, 12]);
    assert_eq!(plan.steps[0].text, "RUN echo one     two     three");
}

#[test]
fn crlf_and_bom() {
    let plan = ok("\u{feff}FROM alpine\r\nRUN echo hi \\\r\n  there\r\n");
    assert_eq!(ops(&plan), vec![run("echo hi   there", &[])]);
}

#[test]
fn escape_directive() {
    let text = "# escape=`\n\
                FROM alpine\n\
                COPY C:\\src\\app `\n\
                \x20    /app/\n\
                ENV P=C:\\path\\to V=`$HOME Q=\"a`\"b\"\n\
                RUN echo a `\n\
                \x20   b\n\
                RUN echo back\\\n\
                RUN two\n";
    let plan = ok(text);
    assert_eq!(
        ops(&plan),
        vec![
            copy(&["C:\\src\\app"], "/app/"),
            Op::Env(kv(&[("P", "C:\\path\\to"), ("V", "$HOME"), ("Q", "a\"b")])),
            run("echo a     b", &[]),
            run("echo back\\", &[]),
            run("two", &[]),
        ]
    );
    assert_eq!(plan.steps[0].line, 3);
    assert_eq!(plan.steps[2].line, 6);
}

#[test]
fn directives_only_at_the_top() {
    // A comment first: the escape line is a comment.
    let plan = ok("# hello\n# escape=`\nFROM alpine\nRUN a `\nRUN b\n");
    assert_eq!(ops(&plan), vec![run("a `", &[]), run("b", &[])]);
    // A blank line first too.
    let plan = ok("\n# escape=`\nFROM alpine\nRUN a `\nRUN b\n");
    assert_eq!(plan.steps.len(), 2);
    // syntax is accepted and ignored, in any case and spacing, with escape after it.
    let plan = ok("#  SYNTAX = docker/dockerfile:1.7\n# Escape=`\nFROM alpine\nRUN a `\n  b\n");
    assert_eq!(ops(&plan), vec![run("a   b", &[])]);
    err_at("# escape=x\nFROM alpine\n", 1, "invalid escape");
    err_at("# escape=`\n# escape=\\\nFROM alpine\n", 2, "given twice");
}

#[test]
fn keywords_are_case_insensitive() {
    let plan = ok("from alpine\nrun echo hi\nCopy a /b\nWorkDir /w\n");
    assert_eq!(
        texts(&plan),
        strs(&["RUN echo hi", "COPY a /b", "WORKDIR /w"])
    );
}

#[test]
fn from_forms() {
    assert_eq!(ok("FROM scratch\nCOPY app /app\n").base, "scratch");
    assert_eq!(
        ok("FROM ${REG:-docker.io}/library/alpine AS base\n").base,
        "docker.io/library/alpine"
    );
    assert_eq!(
        ok_with(
            "ARG REG\nFROM ${REG:+$REG/}alpine\n",
            &[("REG", "r.example")]
        )
        .base,
        "r.example/alpine"
    );
    assert_eq!(ok("ARG REG\nFROM ${REG:+$REG/}alpine\n").base, "alpine");
    assert!(ok("FROM alpine\n").steps.is_empty());
}

fn lookup(name: &str) -> Option<String> {
    match name {
        "A" => Some("a".into()),
        "EMPTY" => Some(String::new()),
        "SP" => Some("x y".into()),
        _ => None,
    }
}

#[test]
fn expansion_forms() {
    for (word, expected) in [
        ("$A", "a"),
        ("${A}", "a"),
        ("${A}b", "ab"),
        ("$Ab", ""),
        ("$A-b", "a-b"),
        ("$A.$A", "a.a"),
        ("${NOPE}", ""),
        ("pre$NOPE/post", "pre/post"),
        ("${A:-d}", "a"),
        ("${EMPTY:-d}", "d"),
        ("${NOPE:-d}", "d"),
        ("${A-d}", "a"),
        ("${EMPTY-d}", ""),
        ("${NOPE-d}", "d"),
        ("${A:+w}", "w"),
        ("${EMPTY:+w}", ""),
        ("${NOPE:+w}", ""),
        ("${A+w}", "w"),
        ("${EMPTY+w}", "w"),
        ("${NOPE+w}", ""),
        ("${A?}", "a"),
        ("${EMPTY?}", ""),
        ("${NOPE:-$A}", "a"),
        ("${NOPE:-${A:+[$A]}}", "[a]"),
        ("${NOPE:-'x}y'}", "x}y"),
        ("${NOPE:-\"$A b\"}", "a b"),
        ("${NOPE:-x\\}y}", "x}y"),
        ("$SP", "x y"),
        ("\\$A", "$A"),
        ("\\${A}", "${A}"),
        ("'$A'", "$A"),
        ("'${A'", "${A"),
        ("\"$A\"", "a"),
        ("\"${A}\"", "a"),
        ("\"\\$A\"", "$A"),
        ("\"a\\\"b\"", "a\"b"),
        ("\"a\\\\b\"", "a\\b"),
        ("\"a\\b\"", "a\\b"),
        ("\"it's\"", "it's"),
        ("'say \"hi\"'", "say \"hi\""),
        ("a\\ b", "a b"),
        ("a\\", "a"),
        ("a\"b c\"d", "ab cd"),
        ("''", ""),
        ("$", "$"),
        ("a$", "a$"),
        ("$/x", "$/x"),
        ("100%", "100%"),
        ("$1", ""),
        ("$$", ""),
    ] {
        assert_eq!(expand(word, &lookup).as_deref(), Ok(expected), "{word}");
    }
}

#[test]
fn expansion_errors() {
    for (word, needle) in [
        ("${A", "missing '}'"),
        ("${A:-x", "missing '}'"),
        ("${", "missing '}'"),
        ("${}", "bad substitution"),
        ("${:-x}", "bad substitution"),
        ("${A:}", "unsupported modifier (:})"),
        ("${A#x}", "unsupported modifier (#)"),
        ("${A/x/y}", "unsupported modifier (/)"),
        ("'abc", "matching single-quote"),
        ("\"abc", "matching double-quote"),
        ("${NOPE?}", "NOPE: is not allowed to be unset"),
        ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
        ("${NOPE:?custom message}", "NOPE: custom message"),
    ] {
        let e = expand(word, &lookup).expect_err(word);
        assert!(e.contains(needle), "{word}: {e}");
    }
}

#[test]
fn expansion_with_backtick_escape() {
    let expand = |word| expand_with_escape(word, '`', &lookup);
    assert_eq!(expand("`$A").as_deref(), Ok("$A"));
    assert_eq!(expand("a\\b$A").as_deref(), Ok("a\\ba"));
    assert_eq!(expand("\"`\"`$A\"").as_deref(), Ok("\"$A"));
}

#[test]
fn quoting_in_word_splitting_instructions() {
    let text = r#"FROM alpine
ENV A="x y" B='$A' C=$A D="${A}z" E=a\ b F= G=""
LABEL "com.example.vendor"="ACME Inc" empty=
COPY "my file.txt" $A/
COPY ["$A", "two words", "/dst dir/"]
COPY a b c/
COPY "a b" c/
"#;
    let plan = ok(text);
    assert_eq!(
        ops(&plan),
        vec![
            Op::Env(kv(&[
                ("A", "x y"),
                ("B", "$A"),
                ("C", ""),
                ("D", "z"),
                ("E", "a b"),
                ("F", ""),
                ("G", ""),
            ])),
            Op::Label(kv(&[("com.example.vendor", "ACME Inc"), ("empty", "")])),
            copy(&["my file.txt"], "x y/"),
            copy(&["x y", "two words"], "/dst dir/"),
            copy(&["a", "b"], "c/"),
            copy(&["a b"], "c/"),
        ]
    );
    assert_eq!(
        texts(&plan),
        strs(&[
            r#"ENV A="x y" B="$A" C="" D=z E="a b" F="" G="""#,
            r#"LABEL com.example.vendor="ACME Inc" empty="""#,
            r#"COPY "my file.txt" "x y/""#,
            r#"COPY "x y" "two words" "/dst dir/""#,
            "COPY a b c/",
            r#"COPY "a b" c/"#,
        ])
    );
}

#[test]
fn env_pairs_see_the_env_before_the_instruction() {
    // The example of the Dockerfile reference.
    let plan = ok("FROM alpine\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n");
    assert_eq!(
        ops(&plan)[1..],
        [
            Op::Env(kv(&[("abc", "bye"), ("def", "hello")])),
            Op::Env(kv(&[("ghi", "bye")])),
        ]
    );
}

#[test]
fn env_legacy_form() {
    let plan = ok("FROM alpine\nENV MSG hello   world \"x\"\nENV ONE=1\nENV TWO $ONE\n");
    assert_eq!(
        ops(&plan),
        vec![
            Op::Env(kv(&[("MSG", "hello   world x")])),
            Op::Env(kv(&[("ONE", "1")])),
            Op::Env(kv(&[("TWO", "1")])),
        ]
    );
    assert_eq!(plan.steps[0].text, "ENV MSG=\"hello   world x\"");
}

#[test]
fn global_args_are_for_from_only() {
    let text = "ARG TAG=3.19\n\
                ARG UNUSED=1\n\
                FROM alpine:$TAG\n\
                WORKDIR /x$TAG\n\
                RUN echo $TAG\n\
                ARG TAG\n\
                RUN echo $TAG\n\
                WORKDIR /$TAG\n";
    let plan = ok(text);
    assert_eq!(plan.base, "alpine:3.19");
    assert_eq!(
        ops(&plan),
        vec![
            Op::Workdir("/x".into()),
            run("echo $TAG", &[]),
            Op::Arg { name: "TAG".into() },
            run("echo $TAG", &[("TAG", "3.19")]),
            Op::Workdir("/3.19".into()),
        ]
    );
    // A build arg overrides the global default, before and after FROM.
    let plan = ok_with(text, &[("TAG", "edge")]);
    assert_eq!(plan.base, "alpine:edge");
    assert_eq!(ops(&plan)[3], run("echo $TAG", &[("TAG", "edge")]));
    // A re-declaration with its own default does not take the global value.
    let plan = ok("ARG TAG=3.19\nFROM alpine:$TAG\nARG TAG=local\nRUN x\n");
    assert_eq!(ops(&plan)[1], run("x", &[("TAG", "local")]));
    // Global ARG defaults see earlier global ARGs.
    let plan = ok("ARG V=1\nARG IMAGE=app:v$V\nFROM $IMAGE\n");
    assert_eq!(plan.base, "app:v1");
}

#[test]
fn build_args_override_defaults() {
    let text = "FROM alpine\nARG A=default\nARG B\nARG C\nARG E=$A-e\nRUN x\nUSER ${B:-nobody}\n";
    let plan = ok_with(text, &[("A", "over"), ("C", "c"), ("UNDECLARED", "u")]);
    // B has no value: unset, so not in the environment and expanded to nothing.
    assert_eq!(
        ops(&plan)[4],
        run("x", &[("A", "over"), ("C", "c"), ("E", "over-e")])
    );
    assert_eq!(ops(&plan)[5], Op::User("nobody".into()));
    assert_eq!(
        texts(&plan)[..4],
        strs(&["ARG A=default", "ARG B", "ARG C", "ARG E=over-e"])
    );
    // An empty build arg is a value.
    let plan = ok_with("FROM alpine\nARG A=x\nRUN y\n", &[("A", "")]);
    assert_eq!(ops(&plan)[1], run("y", &[("A", "")]));
}

#[test]
fn several_args_in_one_instruction() {
    let plan = ok("FROM alpine\nARG A=1 B=$A C\nRUN x\n");
    assert_eq!(
        plan.steps[..3],
        [
            step(2, "ARG A=1", Op::Arg { name: "A".into() }),
            step(2, "ARG B=1", Op::Arg { name: "B".into() }),
            step(2, "ARG C", Op::Arg { name: "C".into() }),
        ]
    );
    assert_eq!(ops(&plan)[3], run("x", &[("A", "1"), ("B", "1")]));
}

#[test]
fn env_shadows_arg() {
    let text = "FROM alpine\n\
                ARG NAME=arg\n\
                ARG OTHER=o\n\
                RUN before\n\
                ENV NAME=env\n\
                ARG NAME=again\n\
                USER $NAME\n\
                RUN after\n";
    let plan = ok_with(text, &[("NAME", "build")]);
    assert_eq!(
        ops(&plan),
        vec![
            Op::Arg {
                name: "NAME".into()
            },
            Op::Arg {
                name: "OTHER".into()
            },
            run("before", &[("NAME", "build"), ("OTHER", "o")]),
            Op::Env(kv(&[("NAME", "env")])),
            Op::Arg {
                name: "NAME".into()
            },
            Op::User("env".into()),
            run("after", &[("OTHER", "o")]),
        ]
    );
}

#[test]
fn base_env_is_visible() {
    let base_env = kv(&[("PATH", "/usr/bin:/bin"), ("LANG", "C.UTF-8")]);
    let text = "FROM alpine\nARG LANG=en\nENV PATH=/app/bin:$PATH\nRUN x\n";
    let plan = plan_with_base_env(text, &BTreeMap::new(), &base_env).expect("plans");
    assert_eq!(
        ops(&plan)[1..],
        [
            Op::Env(kv(&[("PATH", "/app/bin:/usr/bin:/bin")])),
            // LANG of the base image shadows the ARG.
            run("x", &[]),
        ]
    );
}

#[test]
fn workdir_chaining() {
    let text = "FROM alpine\n\
                WORKDIR a\n\
                WORKDIR b/c\n\
                WORKDIR ../d\n\
                WORKDIR /abs/\n\
                WORKDIR ./x/.\n\
                WORKDIR ../../..\n\
                WORKDIR //srv//app\n";
    let dirs: Vec<Op> = ["/a", "/a/b/c", "/a/b/d", "/abs", "/abs/x", "/", "/srv/app"]
        .iter()
        .map(|d| Op::Workdir(d.to_string()))
        .collect();
    let plan = ok(text);
    assert_eq!(ops(&plan), dirs);
    // The text keeps the argument as given.
    assert_eq!(texts(&plan)[..2], strs(&["WORKDIR a", "WORKDIR b/c"]));
    let plan = ok("FROM alpine\nENV BASE=/opt\nWORKDIR \"$BASE/my app\"\n");
    assert_eq!(ops(&plan)[1], Op::Workdir("/opt/my app".into()));
    assert_eq!(texts(&plan)[1], "WORKDIR \"/opt/my app\"");
}

#[test]
fn exec_and_shell_forms() {
    let text = r#"FROM alpine
RUN ["echo", "hi there"]
RUN [ -f /etc/os-release ] && echo yes
RUN ["unterminated"
CMD ["a", 'b']
CMD echo "$HOME"
CMD []
ENTRYPOINT ["/entry.sh"]
ENTRYPOINT exec ./app --flag
RUN echo $HOME ${NOPE:-x}
"#;
    let plan = ok(text);
    assert_eq!(
        ops(&plan),
        vec![
            Op::Run {
                argv: strs(&["echo", "hi there"]),
                env: vec![]
            },
            run("[ -f /etc/os-release ] && echo yes", &[]),
            run("[\"unterminated\"", &[]),
            Op::Cmd(sh("[\"a\", 'b']")),
            Op::Cmd(sh("echo \"$HOME\"")),
            Op::Cmd(vec![]),
            Op::Entrypoint(strs(&["/entry.sh"])),
            Op::Entrypoint(sh("exec ./app --flag")),
            // Not expanded: the shell does it.
            run("echo $HOME ${NOPE:-x}", &[]),
        ]
    );
    assert_eq!(texts(&plan)[0], "RUN [\"echo\", \"hi there\"]");
}

#[test]
fn expose_normalization() {
    let text =
        "FROM alpine\nARG PORTS=\"9000 9001/sctp\"\nEXPOSE 80 443/TCP 53/udp 8000-8002 $PORTS\n";
    let plan = ok(text);
    assert_eq!(
        plan.steps[1],
        step(
            3,
            "EXPOSE 80 443/TCP 53/udp 8000-8002 9000 9001/sctp",
            Op::Expose(strs(&[
                "80/tcp",
                "443/tcp",
                "53/udp",
                "8000/tcp",
                "8001/tcp",
                "8002/tcp",
                "9000/tcp",
                "9001/sctp"
            ])),
        )
    );
}

#[test]
fn copy_flags() {
    let text = "FROM alpine\n\
                ARG OWNER=app\n\
                COPY --chmod=755 --chown=$OWNER:$OWNER a /b\n\
                ADD --chmod=4755 x.tar /opt/\n\
                COPY --chmod=0 a /c\n";
    let plan = ok(text);
    let Op::Copy { chown, chmod, .. } = &plan.steps[1].op else {
        panic!("{:?}", plan.steps[1]);
    };
    assert_eq!((chown.as_deref(), *chmod), (Some("app:app"), Some(0o755)));
    assert_eq!(plan.steps[1].text, "COPY --chown=app:app --chmod=755 a /b");
    assert!(matches!(
        plan.steps[2].op,
        Op::Copy {
            chmod: Some(0o4755),
            add: true,
            ..
        }
    ));
    assert!(matches!(plan.steps[3].op, Op::Copy { chmod: Some(0), .. }));
}

#[test]
fn plans_are_deterministic() {
    let args = build_args(&[("VARIANT", "bookworm")]);
    assert_eq!(plan(REALISTIC, &args), plan(REALISTIC, &args));
}
