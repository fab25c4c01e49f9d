-- Wireshark dissector for the Crust wire protocol (version 2), see docs/protocol.md.
--
-- Recognises Crust on any TCP port by its clear-text preamble ("CRST", version range, mode).
-- In tracer mode (frames in clear text) it decodes the authentication exchange and every
-- frame; in TLS mode it hands the stream to Wireshark's TLS dissector, and when the TLS
-- session is decrypted (a key log from `crust-peer --key-log FILE`, given to Wireshark as
-- `tls.keylog_file`) it decodes the frames inside as well. Reliable UDP (QUIC) decrypted
-- with the same key log: the stream's preamble and frames are decoded too.
--
-- Use:   tshark -X lua_script:tools/wireshark/crust.lua -r capture.pcapng -O crust
-- or copy it to ~/.local/lib/wireshark/plugins/ (Wireshark 4.0 or newer).
--
-- Control payloads are decoded field by field: ping/pong (1/2), observed address (3),
-- superseded (6), NAT filtering test (16), hole-punch coordination (17), relay circuits (19),
-- and tracer mode's hello (24) and proof (25). Kinds 4 and 5 (reserved for gossip and relay) and plug-in kinds
-- (32 and up) are shown as bytes, like user messages (0) and message chunks (7).

local crust = Proto("crust", "Crust peer-to-peer protocol")

local MAGIC = "CRST"
local PREAMBLE_LEN = 8
local HEADER_LEN = 5
-- Frames above this are not Crust (the default maximum message size is 16 MiB).
local MAX_FRAME = 64 * 1024 * 1024

local kind_names = {
    [0] = "Message",
    [1] = "Ping",
    [2] = "Pong",
    [3] = "ObservedAddress",
    [4] = "PeerExchange",
    [5] = "ConnectionInfoRelay",
    [6] = "Superseded",
    [7] = "MessageChunk",
    [16] = "NatFilteringTest",
    [17] = "HolePunch",
    [18] = "Delivered",
    [19] = "Relay",
    [24] = "TracerHello",
    [25] = "TracerProof",
}

local function kind_name(kind)
    if kind_names[kind] then
        return kind_names[kind]
    elseif kind >= 32 then
        return "PlugIn(" .. kind .. ")"
    end
    return "Unknown(" .. kind .. ")"
end

local mode_names = { [0] = "tls", [1] = "tracer" }
local family_names = { [4] = "IPv4", [6] = "IPv6" }
local proto_names = { [1] = "tcp", [2] = "rudp" }
local filtering_types = { [1] = "Request", [2] = "Forward", [3] = "Report" }
local punch_types = {
    [1] = "Request", [2] = "Offer", [3] = "Answer", [4] = "Decline",
    [5] = "Answered", [6] = "Refused", [7] = "Sync", [8] = "Go",
}
-- What the 32-byte peer field of a hole-punch message names, by type.
local punch_peer_roles = {
    [1] = "target", [2] = "origin", [3] = "origin", [4] = "origin",
    [5] = "responder", [6] = "refused by", [7] = "target", [8] = "origin",
}
local nat_classes = {
    [0] = "unknown", [1] = "public", [2] = "mapped", [3] = "cone", [4] = "full cone",
    [5] = "address-restricted", [6] = "port-restricted", [7] = "symmetric",
}
local candidate_kinds = { [1] = "mapped", [2] = "observed", [3] = "local" }
local relay_types = {
    [1] = "Connect", [2] = "Incoming", [3] = "Accept", [4] = "Connected",
    [5] = "Refuse", [6] = "Data", [7] = "Credit", [8] = "Close",
}
local relay_refuse_reasons = {
    [1] = "relay disabled", [2] = "target not connected", [3] = "too many circuits",
    [4] = "too many circuits for this peer", [5] = "target refused", [6] = "target timeout",
    [7] = "invalid",
}
local relay_close_reasons = {
    [0] = "finished", [1] = "byte limit", [2] = "time limit", [3] = "flow control",
    [4] = "link lost", [5] = "protocol", [6] = "reset",
}
local refuse_reasons = {
    [1] = "target not connected", [2] = "coordinator busy", [3] = "target busy",
    [4] = "already connected", [5] = "crossed", [6] = "both symmetric",
}
local signature_schemes = {
    [0x0403] = "ecdsa_secp256r1_sha256", [0x0503] = "ecdsa_secp384r1_sha384",
    [0x0603] = "ecdsa_secp521r1_sha512", [0x0804] = "rsa_pss_rsae_sha256",
    [0x0805] = "rsa_pss_rsae_sha384", [0x0806] = "rsa_pss_rsae_sha512",
    [0x0807] = "ed25519", [0x0808] = "ed448",
}

local f = {
    preamble = ProtoField.none("crust.preamble", "Preamble"),
    magic = ProtoField.string("crust.magic", "Magic"),
    max_version = ProtoField.uint16("crust.max_version", "Newest version", base.DEC),
    min_version = ProtoField.uint16("crust.min_version", "Oldest version", base.DEC, nil, 0x7fff),
    mode = ProtoField.uint16("crust.mode", "Mode", base.DEC, mode_names, 0x8000),
    frame = ProtoField.none("crust.frame", "Frame"),
    length = ProtoField.uint32("crust.frame.length", "Length", base.DEC),
    kind = ProtoField.uint8("crust.frame.kind", "Kind", base.DEC, kind_names),
    kind_name = ProtoField.string("crust.frame.kind_name", "Kind name"),
    message = ProtoField.bytes("crust.message", "Message bytes"),
    chunk = ProtoField.bytes("crust.chunk", "Message chunk bytes"),
    payload = ProtoField.bytes("crust.payload", "Payload"),
    ping_nonce = ProtoField.uint64("crust.ping.nonce", "Nonce", base.HEX),
    ping_app = ProtoField.bool("crust.ping.application", "Application ping (top bit)"),
    family = ProtoField.uint8("crust.addr.family", "Address family", base.DEC, family_names),
    ipv4 = ProtoField.ipv4("crust.addr.ipv4", "IPv4 address"),
    ipv6 = ProtoField.ipv6("crust.addr.ipv6", "IPv6 address"),
    port = ProtoField.uint16("crust.addr.port", "Port", base.DEC),
    endpoint_proto = ProtoField.uint8("crust.endpoint.protocol", "Protocol", base.DEC, proto_names),
    filtering_type = ProtoField.uint8("crust.filtering.type", "Type", base.DEC, filtering_types),
    filtering_nonce = ProtoField.uint64("crust.filtering.nonce", "Nonce", base.HEX),
    filtering_count = ProtoField.uint8("crust.filtering.count", "Addresses", base.DEC),
    filtering_flags = ProtoField.uint8("crust.filtering.flags", "Flags", base.HEX),
    filtering_other_port = ProtoField.bool("crust.filtering.other_port", "Sent probes from another port", 8, nil, 0x01),
    filtering_forwarded = ProtoField.bool("crust.filtering.forwarded", "Forwarded to a third peer", 8, nil, 0x02),
    punch_type = ProtoField.uint8("crust.punch.type", "Type", base.DEC, punch_types),
    punch_id = ProtoField.uint64("crust.punch.id", "Request id", base.HEX),
    punch_peer = ProtoField.bytes("crust.punch.peer", "Peer"),
    punch_reason = ProtoField.uint8("crust.punch.reason", "Reason", base.DEC, refuse_reasons),
    nat_class = ProtoField.uint8("crust.punch.nat_class", "NAT class", base.DEC, nat_classes),
    step_flag = ProtoField.uint8("crust.punch.step_known", "Port step known", base.DEC),
    step = ProtoField.int16("crust.punch.step", "Port allocation step", base.DEC),
    probe_nonce = ProtoField.uint64("crust.punch.probe_nonce", "Probe nonce", base.HEX),
    candidates = ProtoField.uint8("crust.punch.candidates", "Candidates", base.DEC),
    candidate_kind = ProtoField.uint8("crust.punch.candidate_kind", "Candidate kind", base.DEC, candidate_kinds),
    delivered_count = ProtoField.uint64("crust.delivered.count", "Messages received", base.DEC),
    delivered_closing = ProtoField.bool("crust.delivered.closing", "Sender ends its side", 8, nil, 0x01),
    relay_type = ProtoField.uint8("crust.relay.type", "Type", base.DEC, relay_types),
    relay_circuit = ProtoField.uint32("crust.relay.circuit", "Circuit id", base.DEC),
    relay_peer = ProtoField.bytes("crust.relay.peer", "Peer"),
    relay_sender_opened = ProtoField.uint8("crust.relay.sender_opened", "Sender opened the circuit", base.DEC),
    relay_refuse = ProtoField.uint8("crust.relay.refuse_reason", "Refuse reason", base.DEC, relay_refuse_reasons),
    relay_close = ProtoField.uint8("crust.relay.close_reason", "Close reason", base.DEC, relay_close_reasons),
    relay_credit = ProtoField.uint32("crust.relay.credit", "Credit (bytes)", base.DEC),
    relay_data = ProtoField.bytes("crust.relay.data", "Circuit bytes"),
    hello_nonce = ProtoField.bytes("crust.hello.nonce", "Nonce"),
    hello_cert = ProtoField.bytes("crust.hello.certificate", "Certificate (DER)"),
    proof_scheme = ProtoField.uint16("crust.proof.scheme", "Signature scheme", base.HEX, signature_schemes),
    proof_signature = ProtoField.bytes("crust.proof.signature", "Signature"),
}
crust.fields = {}
for _, field in pairs(f) do
    table.insert(crust.fields, field)
end

local ef_malformed = ProtoExpert.new("crust.malformed", "Malformed Crust payload",
    expert.group.MALFORMED, expert.severity.WARN)
crust.experts = { ef_malformed }

local f_tcp_stream = Field.new("tcp.stream")
local f_udp_stream = Field.new("udp.stream")
local tls_handle = Dissector.get("tls")

-- Per TCP stream, per direction: the frame number of its preamble and its mode.
local streams = {}

local function stream_key()
    local s = f_tcp_stream()
    if s == nil then
        return nil
    end
    return s.value
end

-- QUIC: the UDP conversation (Crust uses one bidirectional stream per connection).
local function quic_key()
    local s = f_udp_stream()
    if s == nil then
        return nil
    end
    return "quic:" .. s.value
end

local function direction_state(pinfo, key)
    key = key or stream_key()
    if key == nil then
        return nil
    end
    local stream = streams[key]
    if stream == nil then
        stream = {}
        streams[key] = stream
    end
    local dir = tostring(pinfo.src) .. ":" .. tostring(pinfo.src_port)
    local state = stream[dir]
    if state == nil then
        state = {}
        stream[dir] = state
    end
    return state, stream
end

-- A reader over a TvbRange that adds fields to a tree and stops at the end of the payload.
local function reader(range, tree, pinfo)
    local r = { range = range, off = 0, tree = tree, ok = true }
    function r:left()
        return self.range:len() - self.off
    end
    function r:take(n)
        if not self.ok or self:left() < n then
            if self.ok then
                self.tree:add_proto_expert_info(ef_malformed, "payload ends early")
            end
            self.ok = false
            return nil
        end
        local piece = self.range(self.off, n)
        self.off = self.off + n
        return piece
    end
    function r:add(field, n, tree)
        local piece = self:take(n)
        if piece then
            (tree or self.tree):add(field, piece)
        end
        return piece
    end
    function r:ip(tree)
        local fam = self:add(f.family, 1, tree)
        if not fam then
            return nil
        end
        local family = fam:uint()
        if family == 4 then
            local ip = self:add(f.ipv4, 4, tree)
            return ip and tostring(ip:ipv4())
        elseif family == 6 then
            local ip = self:add(f.ipv6, 16, tree)
            return ip and ("[" .. tostring(ip:ipv6()) .. "]")
        end
        self.tree:add_proto_expert_info(ef_malformed, "unknown address family " .. family)
        self.ok = false
        return nil
    end
    function r:addr(tree)
        local ip = self:ip(tree)
        local port = ip and self:add(f.port, 2, tree)
        return port and (ip .. ":" .. port:uint())
    end
    function r:endpoint(tree, label)
        local start = self.off
        local sub = (tree or self.tree):add(crust, self.range(self.off, math.min(self:left(), 1)), label)
        local proto = self:add(f.endpoint_proto, 1, sub)
        local addr = proto and self:addr(sub)
        if addr then
            local text = (proto_names[proto:uint()] or "?") .. "://" .. addr
            sub:set_len(self.off - start)
            sub:set_text(label .. ": " .. text)
            return text
        end
        return nil
    end
    function r:trailing()
        if self.ok and self:left() > 0 then
            self.tree:add_proto_expert_info(ef_malformed, self:left() .. " trailing bytes")
        end
    end
    return r
end

local function ping(range, tree)
    if range:len() ~= 8 then
        tree:add(f.payload, range)
        return ""
    end
    tree:add(f.ping_nonce, range)
    local app = range(0, 1):uint() >= 0x80
    tree:add(f.ping_app, range(0, 1), app)
    return " nonce=0x" .. range:bytes():tohex():lower()
end

local function observed(range, tree, pinfo)
    local r = reader(range, tree, pinfo)
    local addr = r:addr(tree)
    r:trailing()
    return addr and (" " .. addr) or ""
end

local function filtering(range, tree, pinfo)
    local r = reader(range, tree, pinfo)
    local t = r:add(f.filtering_type, 1)
    r:add(f.filtering_nonce, 8)
    if not t then
        return ""
    end
    local ty = t:uint()
    if ty == 1 then
        local n = r:add(f.filtering_count, 1)
        for i = 1, (n and n:uint() or 0) do
            if not r:ip(tree:add(crust, range(r.off, math.min(r:left(), 1)), "Address " .. i)) then
                break
            end
        end
    elseif ty == 2 then
        r:addr(tree:add(crust, range(r.off, math.min(r:left(), 1)), "Target"))
    elseif ty == 3 then
        local flags = r:take(1)
        if flags then
            local ft = tree:add(f.filtering_flags, flags)
            ft:add(f.filtering_other_port, flags)
            ft:add(f.filtering_forwarded, flags)
        end
    end
    r:trailing()
    return " " .. (filtering_types[ty] or ("type " .. ty))
end

local function punch_info(r, tree)
    local info = tree:add(crust, r.range(r.off, math.min(r:left(), 1)), "Info")
    local start = r.off
    r:add(f.nat_class, 1, info)
    local flag = r:add(f.step_flag, 1, info)
    if flag and flag:uint() == 1 then
        r:add(f.step, 2, info)
    end
    r:add(f.probe_nonce, 8, info)
    local n = r:add(f.candidates, 1, info)
    for i = 1, (n and n:uint() or 0) do
        local kind = r:add(f.candidate_kind, 1, info)
        if not kind or not r:endpoint(info, "Candidate " .. i .. " (" .. (candidate_kinds[kind:uint()] or "?") .. ")") then
            break
        end
    end
    info:set_len(r.off - start)
end

local function punch(range, tree, pinfo)
    local r = reader(range, tree, pinfo)
    local t = r:add(f.punch_type, 1)
    r:add(f.punch_id, 8)
    if not t then
        return ""
    end
    local ty = t:uint()
    local peer = r:take(32)
    if peer then
        local role = punch_peer_roles[ty] or "peer"
        tree:add(f.punch_peer, peer):set_text("Peer (" .. role .. "): " .. peer:bytes():tohex():lower())
    end
    if ty == 1 or ty == 3 then
        punch_info(r, tree)
    elseif ty == 2 or ty == 5 then
        r:endpoint(tree, "Observed endpoint")
        punch_info(r, tree)
    elseif ty == 4 or ty == 6 then
        r:add(f.punch_reason, 1)
    end
    r:trailing()
    return " " .. (punch_types[ty] or ("type " .. ty))
end

local function relay(range, tree, pinfo)
    local r = reader(range, tree, pinfo)
    local t = r:add(f.relay_type, 1)
    local id = r:add(f.relay_circuit, 4)
    if not t or not id then
        return ""
    end
    local ty = t:uint()
    if ty == 1 or ty == 2 then
        local peer = r:take(32)
        if peer then
            local role = ty == 1 and "target" or "origin"
            tree:add(f.relay_peer, peer):set_text("Peer (" .. role .. "): " .. peer:bytes():tohex():lower())
        end
    elseif ty == 5 then
        r:add(f.relay_refuse, 1)
    elseif ty == 6 or ty == 7 or ty == 8 then
        r:add(f.relay_sender_opened, 1)
        if ty == 6 then
            if r:left() > 0 then
                r:add(f.relay_data, r:left())
            end
        elseif ty == 7 then
            r:add(f.relay_credit, 4)
        else
            r:add(f.relay_close, 1)
        end
    end
    r:trailing()
    return " " .. (relay_types[ty] or ("type " .. ty)) .. " circuit " .. id:uint()
end

local function hello(range, tree)
    if range:len() < 32 then
        tree:add_proto_expert_info(ef_malformed, "hello shorter than its nonce")
        return ""
    end
    tree:add(f.hello_nonce, range(0, 32))
    if range:len() > 32 then
        tree:add(f.hello_cert, range(32))
    end
    return " certificate " .. (range:len() - 32) .. " bytes"
end

local function proof(range, tree)
    if range:len() < 2 then
        tree:add_proto_expert_info(ef_malformed, "proof shorter than its scheme")
        return ""
    end
    tree:add(f.proof_scheme, range(0, 2))
    if range:len() > 2 then
        tree:add(f.proof_signature, range(2))
    end
    return " " .. (signature_schemes[range(0, 2):uint()] or "scheme?")
end

-- One whole frame at `offset` (header and payload present). Returns a summary.
local function dissect_frame(tvb, pinfo, tree, offset)
    local len = tvb(offset, 4):uint()
    local kind = tvb(offset + 4, 1):uint()
    local name = kind_name(kind)
    local ft = tree:add(crust, tvb(offset, HEADER_LEN + len), "Crust frame: " .. name .. ", " .. len .. " bytes")
    ft:add(f.length, tvb(offset, 4))
    ft:add(f.kind, tvb(offset + 4, 1))
    ft:add(f.kind_name, tvb(offset + 4, 1), name)
    local summary = ""
    if len > 0 then
        local body = tvb(offset + HEADER_LEN, len)
        if kind == 0 then
            ft:add(f.message, body)
        elseif kind == 7 then
            ft:add(f.chunk, body)
        elseif kind == 1 or kind == 2 then
            summary = ping(body, ft)
        elseif kind == 3 then
            summary = observed(body, ft, pinfo)
        elseif kind == 16 then
            summary = filtering(body, ft, pinfo)
        elseif kind == 17 then
            summary = punch(body, ft, pinfo)
        elseif kind == 18 and len == 9 then
            ft:add(f.delivered_count, body(0, 8))
            ft:add(f.delivered_closing, body(8, 1))
            summary = " count=" .. body(0, 8):uint64():tostring()
            if body(8, 1):bitfield(7, 1) == 1 then
                summary = summary .. " closing"
            end
        elseif kind == 19 then
            summary = relay(body, ft, pinfo)
        elseif kind == 24 then
            summary = hello(body, ft)
        elseif kind == 25 then
            summary = proof(body, ft)
        else
            ft:add(f.payload, body)
        end
    end
    if summary ~= "" then
        ft:append_text(":" .. summary)
    end
    return name .. summary
end

local function dissect_preamble(tvb, tree, offset)
    local pt = tree:add(f.preamble, tvb(offset, PREAMBLE_LEN))
    pt:add(f.magic, tvb(offset, 4))
    pt:add(f.max_version, tvb(offset + 4, 2))
    pt:add(f.min_version, tvb(offset + 6, 2))
    pt:add(f.mode, tvb(offset + 6, 2))
    local mode = mode_names[bit.rshift(tvb(offset + 6, 2):uint(), 15)]
    local max = tvb(offset + 4, 2):uint()
    local min = bit.band(tvb(offset + 6, 2):uint(), 0x7fff)
    pt:set_text("Crust preamble: versions " .. min .. "-" .. max .. ", " .. mode .. " mode")
    return mode, "Preamble v" .. min .. "-" .. max .. " " .. mode
end

-- The packet whose Info column we last wrote: a packet can carry several PDUs (a
-- reassembled one and the start of the next), each dissected by its own call.
local info_packet = nil

local function set_info(pinfo, summaries)
    if #summaries == 0 then
        return
    end
    pinfo.cols.protocol = "Crust"
    local text = table.concat(summaries, ", ")
    if info_packet == pinfo.number then
        pinfo.cols.info:append(", " .. text)
    else
        pinfo.cols.info = text
    end
    pinfo.cols.info:fence()
    info_packet = pinfo.number
end

-- The protocol's tree item, added only once there is something to show in it (a packet
-- that only waits for the rest of a frame gets none).
local function lazy_root(tree, tvb, label)
    local item = nil
    return function()
        if item == nil then
            item = tree:add(crust, tvb(), label)
        end
        return item
    end
end

-- Frames from `offset` to the end, asking for more data when one is cut.
local function dissect_frames(tvb, pinfo, root, offset, summaries)
    local total = tvb:len()
    while offset < total do
        if total - offset < HEADER_LEN then
            pinfo.desegment_offset = offset
            pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
            return total
        end
        local len = tvb(offset, 4):uint()
        if len > MAX_FRAME then
            root():add_proto_expert_info(ef_malformed, "frame length " .. len .. " is over any maximum")
            return total
        end
        if total - offset < HEADER_LEN + len then
            pinfo.desegment_offset = offset
            pinfo.desegment_len = HEADER_LEN + len - (total - offset)
            return total
        end
        table.insert(summaries, dissect_frame(tvb, pinfo, root(), offset))
        offset = offset + HEADER_LEN + len
    end
    return offset
end

-- One direction of a Crust stream from `tvb`'s start: the preamble (in the direction's
-- first bytes), then frames, or TLS records on a TLS-mode TCP connection. `frames_inside`:
-- the transport already decrypted (QUIC), so frames follow the preamble whatever the mode.
local function dissect_stream(tvb, pinfo, tree, key, frames_inside)
    local state, stream = direction_state(pinfo, key)
    if state == nil then
        return 0
    end
    local offset = 0
    local summaries = {}
    local root = lazy_root(tree, tvb, "Crust")
    if state.preamble_frame == nil or state.preamble_frame == pinfo.number then
        if tvb:len() < PREAMBLE_LEN then
            pinfo.desegment_offset = 0
            pinfo.desegment_len = PREAMBLE_LEN - tvb:len()
            return tvb:len()
        end
        if tvb(0, 4):string() == MAGIC then
            local mode, summary = dissect_preamble(tvb, root(), 0)
            state.preamble_frame = pinfo.number
            state.mode = mode
            stream.mode = stream.mode or mode
            table.insert(summaries, summary)
            offset = PREAMBLE_LEN
        end
    end
    local mode = state.mode or stream.mode
    if mode == "tls" and not frames_inside then
        set_info(pinfo, summaries)
        if offset < tvb:len() and tls_handle ~= nil then
            -- Each dissector layer lowers can_desegment; TLS must still be able to ask
            -- TCP for the rest of a record, as when TCP calls it directly.
            pinfo.can_desegment = 2
            tls_handle:call(tvb(offset):tvb(), pinfo, tree)
            if pinfo.desegment_len > 0 then
                pinfo.desegment_offset = pinfo.desegment_offset + offset
            end
        end
        pinfo.cols.protocol = "Crust/TLS"
        return tvb:len()
    end
    local done = dissect_frames(tvb, pinfo, root, offset, summaries)
    set_info(pinfo, summaries)
    if frames_inside then
        pinfo.cols.protocol = "Crust/QUIC"
    end
    return done
end

function crust.dissector(tvb, pinfo, tree)
    return dissect_stream(tvb, pinfo, tree, nil, false)
end

-- Crust on any TCP port: a segment that starts with the preamble.
local function heuristic_tcp(tvb, pinfo, tree)
    if tvb:len() < PREAMBLE_LEN or tvb(0, 4):string() ~= MAGIC then
        return false
    end
    local max = tvb(4, 2):uint()
    local min = bit.band(tvb(6, 2):uint(), 0x7fff)
    if max == 0 or min == 0 or min > max then
        return false
    end
    pinfo.conversation = crust
    crust.dissector(tvb, pinfo, tree)
    return true
end

-- Decrypted application data of a TLS session that began with a Crust preamble.
local function heuristic_tls(tvb, pinfo, tree)
    local key = stream_key()
    if key == nil or streams[key] == nil or streams[key].mode ~= "tls" then
        return false
    end
    local summaries = {}
    local root = lazy_root(tree, tvb, "Crust (decrypted)")
    dissect_frames(tvb, pinfo, root, 0, summaries)
    set_info(pinfo, summaries)
    pinfo.cols.protocol = "Crust/TLS"
    return true
end

-- Decrypted QUIC stream data (a key log): Crust's ALPN names it, and the stream opens with
-- the preamble.
local crust_quic = Proto("crust_quic", "Crust over QUIC")

function crust_quic.dissector(tvb, pinfo, tree)
    return dissect_stream(tvb, pinfo, tree, quic_key(), true)
end

crust:register_heuristic("tcp", heuristic_tcp)
local quic_alpn = DissectorTable.get("quic.proto")
if quic_alpn ~= nil then
    quic_alpn:add("crust/1", crust_quic)
end
crust:register_heuristic("tls", heuristic_tls)
