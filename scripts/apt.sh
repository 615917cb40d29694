# Sourced by the project's scripts: apt_install LABEL PACKAGE... installs
# the packages from Debian's archive (as root, else through sudo), saying
# so under LABEL; nothing when no package is named.
apt_install() {
  local label=$1 sudo=
  shift
  [ $# -gt 0 ] || return 0
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "$label: installing $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}
