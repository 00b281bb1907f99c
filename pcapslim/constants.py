"""Wire constants, decision codes and cut categories: the one place they live.

The kernels import these names; numba freezes module-level ints as compile-time constants.
"""

from __future__ import annotations

# --- slimming rule -------------------------------------------------------------------------
KEEP_BYTES = 24  # payload bytes that survive a cut
MAX_CAPLEN = 262144  # captured length above this and above the snaplen is corrupt

# --- decision codes (one uint8 per record) -------------------------------------------------
CAT_KEEP = 0  # record copied byte for byte
CAT_TLS = 1  # TLS port, first payload byte not handshake-class
CAT_TLS_OTHER_PORT = 2  # no TLS port, first payload byte 0x17
CAT_SSH = 3  # port 22, payload does not start with "SSH-"
CAT_QUIC = 4  # UDP port 443
CAT_IPSEC = 5  # UDP port 500 or 4500; under the forensic rules also ESP (IP protocol 50)
# the forensic rules only (SPEC §9)
CAT_WIREGUARD = 6  # WireGuard transport data
CAT_OPENVPN = 7  # OpenVPN data packets (UDP, or whole TCP segments of them)
CAT_DTLS = 8  # DTLS application data, connection-id records, DTLS 1.3 ciphertext
CAT_SRTP = 9  # SRTP and SRTCP in a flow that carried a DTLS handshake
CAT_SMB3 = 10  # SMB 3 transform (encrypted) messages
N_CATEGORIES = 11

CATEGORY_NAMES = ("tls", "tls_other_port", "ssh", "quic", "ipsec", "wireguard", "openvpn", "dtls",
                  "srtp", "smb3")  # codes 1..10 in order  # fmt: skip

# --- record kinds, as the index kernels classify them --------------------------------------
KIND_PACKET = 0  # classic pcap record or pcapng enhanced packet block
KIND_OTHER_PACKET = 1  # pcapng simple/obsolete packet block, or EPB of an undescribed interface
KIND_BLOCK = 2  # pcapng block that is not a packet (copied verbatim)
KIND_SHB = 3  # pcapng section header block

# --- index kernel status codes -------------------------------------------------------------
ST_OK = 0  # window fully consumed, or record budget reached
ST_NEED_MORE = 1  # the record at `pos` runs past the window; `need` bytes from `pos` are wanted
ST_CORRUPT_CAPLEN = 2  # captured length above MAX_CAPLEN and the snaplen
ST_BAD_BLOCK_LEN = 3  # pcapng block length below 12 or not a multiple of 4
ST_LEN_MISMATCH = 4  # pcapng leading and trailing block lengths differ
ST_BAD_SHB = 5  # pcapng section header shorter than 28 bytes or unknown byte-order magic
ST_BAD_IDB = 6  # pcapng interface description block shorter than 20 bytes
ST_BAD_EPB = 7  # pcapng enhanced packet block shorter than 32 bytes or caplen does not fit
ST_IFACE_FULL = 8  # interface table full: grow it and call again at `pos`
ST_BAD_OPB = 9  # pcapng obsolete packet block shorter than 32 bytes or caplen does not fit

# --- classic pcap --------------------------------------------------------------------------
PCAP_MAGIC_US = 0xA1B2C3D4  # microsecond timestamps
PCAP_MAGIC_NS = 0xA1B23C4D  # nanosecond timestamps
PCAP_GLOBAL_HDR_LEN = 24
PCAP_REC_HDR_LEN = 16  # ts_sec, ts_frac, incl_len, orig_len

# --- pcapng --------------------------------------------------------------------------------
PCAPNG_SHB = 0x0A0D0D0A  # section header block (byte-order independent)
PCAPNG_IDB = 0x00000001  # interface description block
PCAPNG_OPB = 0x00000002  # obsolete packet block
PCAPNG_SPB = 0x00000003  # simple packet block
PCAPNG_EPB = 0x00000006  # enhanced packet block
PCAPNG_BOM = 0x1A2B3C4D  # byte-order magic
PCAPNG_MIN_BLOCK = 12  # type + length + trailing length
PCAPNG_MIN_SHB = 28
PCAPNG_MIN_IDB = 20
PCAPNG_MIN_EPB = 32
PCAPNG_MIN_OPB = 32
PCAPNG_MIN_SPB = 16
PCAPNG_EPB_DATA = 28  # packet data offset inside an EPB/OPB
PCAPNG_SPB_DATA = 12  # packet data offset inside an SPB

# --- link types (DLT) ----------------------------------------------------------------------
DLT_NULL = 0  # BSD loopback, 4-byte address family in host order
DLT_EN10MB = 1  # Ethernet
DLT_RAW_12 = 12  # raw IP on some systems
DLT_RAW_14 = 14  # raw IP on some systems
DLT_RAW = 101  # raw IP
DLT_LOOP = 108  # OpenBSD loopback
DLT_LINUX_SLL = 113  # Linux cooked capture
DLT_IPV4 = 228  # raw IPv4
DLT_IPV6 = 229  # raw IPv6
DLT_LINUX_SLL2 = 276  # Linux cooked capture v2

ETH_HDR_LEN = 14
SLL_HDR_LEN = 16
SLL_PROTO_OFF = 14
SLL2_HDR_LEN = 20
SLL2_PROTO_OFF = 0
NULL_HDR_LEN = 4

# BSD address families that mean IPv4 / IPv6
AF_INET_BSD = 2
AF_INET6_BSD_A = 10  # Linux
AF_INET6_BSD_B = 24  # NetBSD/OpenBSD
AF_INET6_BSD_C = 28  # FreeBSD
AF_INET6_BSD_D = 30  # macOS

# --- EtherTypes ----------------------------------------------------------------------------
ETH_TYPE_IP = 0x0800  # IPv4
ETH_TYPE_IP6 = 0x86DD  # IPv6
ETH_TYPE_8021Q = 0x8100  # 802.1Q tag
ETH_TYPE_8021AD = 0x88A8  # 802.1ad service tag
ETH_TYPE_QINQ_OLD = 0x9100  # pre-standard QinQ tag
ETH_TYPE_MPLS_UC = 0x8847  # MPLS unicast
ETH_TYPE_MPLS_MC = 0x8848  # MPLS multicast
VLAN_TAG_LEN = 4
MPLS_LABEL_LEN = 4

# --- IP ------------------------------------------------------------------------------------
IP4_MIN_HDR = 20
IP4_FRAG_MASK = 0x3FFF  # MF flag and fragment offset (DF excluded)
IP4_OPT_EOL = 0  # end of option list
IP4_OPT_NOP = 1  # no-operation
IP4_OPT_LSRR = 3  # loose source route (type & 0x1f)
IP4_OPT_SSRR = 9  # strict source route (type & 0x1f)
IP4_SRR_MIN_LEN = 7
IP6_HDR_LEN = 40

IP_PROTO_HOPOPTS = 0  # IPv6 hop-by-hop options
IP_PROTO_TCP = 6
IP_PROTO_UDP = 17
IP_PROTO_ROUTING = 43  # IPv6 routing header
IP_PROTO_FRAGMENT = 44  # IPv6 fragment header
IP_PROTO_ESP = 50
IP_PROTO_AH = 51
IP_PROTO_NONE = 59  # IPv6 no next header
IP_PROTO_DSTOPTS = 60  # IPv6 destination options

IP6_RT_TYPE0 = 0  # source route (deprecated), final destination = last address
IP6_RT_TYPE2 = 2  # mobile IPv6 home address
IP6_RT_SRH = 4  # segment routing, final destination = Segment List[0]

TCP_MIN_HDR = 20
UDP_HDR_LEN = 8

# --- tunnels (SPEC §10) --------------------------------------------------------------------
IP_PROTO_IPIP = 4  # IPv4 inside
IP_PROTO_IPV6 = 41  # IPv6 inside
IP_PROTO_GRE = 47
PORT_VXLAN = 4789
PORT_VXLAN_LINUX = 8472
PORT_GENEVE = 6081
PORT_GTPU = 2152
VXLAN_HDR_LEN = 8
VXLAN_FLAG_I = 0x08
GENEVE_HDR_LEN = 8
GRE_HDR_LEN = 4
GRE_FLAG_C = 0x80  # checksum (and reserved) present
GRE_FLAG_R = 0x40  # routing present (RFC 1701): not decoded
GRE_FLAG_K = 0x20  # key present
GRE_FLAG_S = 0x10  # sequence number present
ETH_TYPE_TEB = 0x6558  # transparent Ethernet bridging: an Ethernet frame follows
ETH_TYPE_ERSPAN_II = 0x88BE
ETH_TYPE_ERSPAN_III = 0x22EB
ERSPAN_II_HDR_LEN = 8
ERSPAN_III_HDR_LEN = 12
ERSPAN_III_SUBHDR_LEN = 8  # present with the O flag (lowest bit of the header's last byte)
GTPU_HDR_LEN = 8
GTPU_OPT_LEN = 4  # sequence number, N-PDU number, next extension header type
GTPU_G_PDU = 255
MAX_TUNNEL_DEPTH = 4
TUN_VXLAN = 1  # bits of F_TUNNEL, in the order of TUNNEL_NAMES
TUN_GENEVE = 2
TUN_GRE = 4
TUN_ERSPAN = 8
TUN_GTPU = 16
TUN_IPIP = 32
TUN_DEPTH_SHIFT = 8
TUNNEL_NAMES = ("vxlan", "geneve", "gre", "erspan", "gtpu", "ipip")

# --- TLS / SSH / ports ---------------------------------------------------------------------
TLS_CHANGE_CIPHER_SPEC = 0x14
TLS_ALERT = 0x15
TLS_HANDSHAKE = 0x16
TLS_APPLICATION_DATA = 0x17
TLS_HEARTBEAT = 0x18

PORT_SSH = 22
PORT_QUIC = 443
PORT_IKE = 500
PORT_IKE_NAT_T = 4500
PORT_WIREGUARD = 51820
PORT_OPENVPN = 1194
TLS_PORTS = (443, 853, 465, 993, 995, 8443, 5061)

# --- record table: one int64 row per record, filled by the index kernels -------------------
F_START = 0  # record start (buffer offset)
F_END = 1  # record end (buffer offset, exclusive)
F_DATA = 2  # frame start (buffer offset)
F_CAPLEN = 3  # captured length of the frame
F_KIND = 4  # KIND_* code
F_LINK = 5  # link type of the frame, -1 when unknown
F_CAT = 6  # CAT_* decision
F_IP = 7  # IP header, relative to the frame start (cut records only)
F_L4 = 8  # TCP/UDP header, relative to the frame start (cut records only)
F_PAY = 9  # payload start, relative to the frame start (cut records only)
F_DST = 10  # pseudo-header destination address, relative to the frame start (cut records only)
F_OUTLEN = 11  # bytes this record occupies in the output
F_LE = 12  # 1 when the record's header fields are little-endian
F_TUNNEL = 13  # tunnels the packet was found inside (TUN_* bits) | their depth << TUN_DEPTH_SHIFT
N_FIELDS = 14

# --- pcapng reader state: an int64 array the index kernels carry across windows ---------------
S_LE = 0  # current section is little-endian
S_IFACES = 1  # interfaces described in the current section
N_STATE = 2

# --- per-packet flow table (pcapslim.flows): one int64 row per packet -------------------------
P_LINK = 0  # link type, -1 when unknown
P_VER = 1  # 4, 6, or 0 for a packet without a usable IP header
P_PROTO = 2  # IP protocol (the last one reached for IPv6), 0 without IP
P_A0 = 3  # endpoint A: address as four 32-bit words (IPv4 in the last), then its port
P_A1 = 4
P_A2 = 5
P_A3 = 6
P_APORT = 7
P_B0 = 8  # endpoint B, the larger of the two, same layout
P_B1 = 9
P_B2 = 10
P_B3 = 11
P_BPORT = 12
P_TS_NS = 13  # timestamp, nanoseconds since the epoch; -1 when the record has none
P_CAPLEN = 14  # captured frame bytes before slimming
P_KEPT = 15  # captured frame bytes after slimming
P_CAT = 16  # CAT_* decision
P_TUNNEL = 17  # F_TUNNEL of the packet: the tunnels it was found inside
N_PFIELDS = 18
PCAPNG_OPT_TSRESOL = 9  # interface option: timestamp resolution
DEFAULT_TSRESOL = 6  # microseconds, when an interface says nothing
MAX_TS_IFACES = 1024  # interfaces per section with their own resolution; more use the default

# --- forensic rules (SPEC §8) ------------------------------------------------------------------
RULES_COMPATIBLE = "compatible"
RULES_FORENSIC = "forensic"
TLS_MAX_RECORD = 18432  # a plausible TLS record is at most this long
SSH_MAX_PACKET = 262144  # a plausible cleartext SSH packet is at most this long
SSH_MSG_NEWKEYS = 21
QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF
IKE_HDR_LEN = 28
IKE_SA_INIT = 34  # IKEv2 exchange type
IKE_FLAG_ENCRYPTION = 0x01  # IKEv1 flags: the rest of the message is encrypted
# SPEC §9
WG_INITIATION = 1  # message types, each followed by three zero bytes
WG_RESPONSE = 2
WG_COOKIE = 3
WG_DATA = 4
WG_INITIATION_LEN = 148  # exact payload lengths of the handshake messages
WG_RESPONSE_LEN = 92
WG_COOKIE_LEN = 64
WG_DATA_MIN = 32  # header 16 + an empty, authenticated packet 16
OVPN_HARD_RESET_CLIENT_V2 = 7  # opcodes (first byte >> 3)
OVPN_HARD_RESET_SERVER_V2 = 8
OVPN_HARD_RESET_CLIENT_V3 = 10
OVPN_DATA_V1 = 6
OVPN_DATA_V2 = 9
OVPN_MAX_OPCODE = 11
OVPN_TCP_MIN_START = 14  # a plausible first packet of a TCP direction is at least this long
DTLS_HDR_LEN = 13
DTLS_CID = 25  # a DTLS 1.2 record with a connection id: ciphertext
SMB2_PLAIN = 0xFE  # protocol id first bytes: fe 'SMB' message, fd 'SMB' transform (encrypted),
SMB2_TRANSFORM = 0xFD  # fc 'SMB' compressed
SMB2_COMPRESSED = 0xFC
FLOW_SLOTS = (
    1 << 18
)  # directions the forensic table holds (16 MiB; a third full at 40,000 connections)
FLOW_PROBES = 16  # slots looked at before the least recently used one is taken over

# the forensic flow state beside the table: an int64 array carried across windows
FS_CLOCK = 0  # packets decided so far: the time of the least-recently-used rule
FS_PROBES = 1  # slots looked at per lookup
N_FSTATE = 2

# direction table of the forensic rules: one int64 row of 64 bytes per TCP direction (16 MiB
# for FLOW_SLOTS). Word T_HEAD holds the key's version (bits 0-3; 0: a free slot) and ports
# (bits 24-55) beside the small state fields; the addresses take four words, two 32-bit words
# each; one word holds the bytes left of the current TLS record or SSH packet, or the header
# bytes gathered so far (the header is gathered only once the record before is over).
T_HEAD = 0
T_ADDR = 1  # 4 words: source words 0-1, 2-3, destination words 0-1, 2-3
T_NEXT = 5  # next expected sequence number
T_LAST = 6  # last use, for taking over the least recently used slot
T_REM_HDR = 7  # bytes left (while no header byte is gathered), else the header, first byte highest
N_TFIELDS = 8
# fields of T_HEAD: (shift, mask)
H_VERSION = (0, 0xF)  # 4 or 6 for a TCP direction; 8 added for a UDP flow (SPEC §9)
H_MODE = (4, 0xF)
H_PHASE = (8, 0xF)
H_HAVE = (12, 0xF)  # header bytes gathered so far
H_RTYPE = (16, 0xFF)  # type of the current TLS record, SMB protocol byte or OpenVPN opcode
H_KIND = (8, 0xF)  # what a UDP flow carries (its rows have no phase): a FK_* code
H_PORTS = (24, 0xFFFFFFFF)
H_KEY_MASK = 0xF | (0xFFFFFFFF << 24)  # the key's bits of T_HEAD: version and ports
