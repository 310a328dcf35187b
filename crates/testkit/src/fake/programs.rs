//! The fake sandboxes' own commands: shell scripts in the fake runtime's directory, which
//! its hosted agents search before the command's `PATH`.

use std::path::Path;

/// (name, script). The host's `echo`, `cat`, `env`, … are used as they are.
const PROGRAMS: &[(&str, &str)] = &[
    // `é` split across two writes, a line on stderr between them.
    (
        "split-utf8",
        "printf 'caf\\303'; sleep 0.05; printf 'warn\\n' >&2; sleep 0.05; printf '\\251\\n'\n",
    ),
    // The same, with the stderr line last.
    (
        "split-utf8-then-warn",
        "printf 'caf\\303'; sleep 0.3; printf '\\251\\n'; sleep 0.3; printf 'warn\\n' >&2\n",
    ),
    // Every byte value 0..=255, in two writes.
    ("binary", "printf '\\000\\001\\002\\003\\004\\005\\006\\007\\010\\011\\012\\013\\014\\015\\016\\017\\020\\021\\022\\023\\024\\025\\026\\027\\030\\031\\032\\033\\034\\035\\036\\037\\040\\041\\042\\043\\044\\045\\046\\047\\050\\051\\052\\053\\054\\055\\056\\057\\060\\061\\062\\063\\064\\065\\066\\067\\070\\071\\072\\073\\074\\075\\076\\077\\100\\101\\102\\103\\104\\105\\106\\107\\110\\111\\112\\113\\114\\115\\116\\117\\120\\121\\122\\123\\124\\125\\126\\127\\130\\131\\132\\133\\134\\135\\136\\137\\140\\141\\142\\143'; sleep 0.05; printf '\\144\\145\\146\\147\\150\\151\\152\\153\\154\\155\\156\\157\\160\\161\\162\\163\\164\\165\\166\\167\\170\\171\\172\\173\\174\\175\\176\\177\\200\\201\\202\\203\\204\\205\\206\\207\\210\\211\\212\\213\\214\\215\\216\\217\\220\\221\\222\\223\\224\\225\\226\\227\\230\\231\\232\\233\\234\\235\\236\\237\\240\\241\\242\\243\\244\\245\\246\\247\\250\\251\\252\\253\\254\\255\\256\\257\\260\\261\\262\\263\\264\\265\\266\\267\\270\\271\\272\\273\\274\\275\\276\\277\\300\\301\\302\\303\\304\\305\\306\\307\\310\\311\\312\\313\\314\\315\\316\\317\\320\\321\\322\\323\\324\\325\\326\\327\\330\\331\\332\\333\\334\\335\\336\\337\\340\\341\\342\\343\\344\\345\\346\\347\\350\\351\\352\\353\\354\\355\\356\\357\\360\\361\\362\\363\\364\\365\\366\\367\\370\\371\\372\\373\\374\\375\\376\\377'\n"),
    ("fail", "echo failing >&2\nexit \"${1:-1}\"\n"),
    ("yes", "head -c \"${1:-10}\" /dev/zero | tr '\\0' y\n"),
    (
        "ticks",
        "i=1\nwhile [ \"$i\" -le \"${1:-3}\" ]; do sleep 0.01; echo \"tick $i\"; i=$((i+1)); done\n",
    ),
    // Runs until killed (or timed out).
    ("sleep", "echo started\nexec sleep infinity\n"),
    // The fake's agent connection fails after this first line (see `conn.rs`).
    ("broken", "echo partial\nexec sleep infinity\n"),
];

/// Writes the fake's commands into `dir` (made here).
pub(crate) fn install(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    for (name, body) in PROGRAMS {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}
