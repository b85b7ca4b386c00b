#!/usr/bin/env python3
"""Regenerates messages/schema/*.schema.json from the Go sources (patterns are copied
from validate.go and shape.go, states and loadstate names from states.go).
TestSchemaPatternsMatchGo and TestSchemasAgreeWithDecoder fail when they drift.
Run: python3 messages/schema/gen_schema.py"""
import os
PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import json, re, collections
src = open(os.path.join(PKG, 'validate.go')).read()
pat = dict(re.findall(r'(\w+Re)\s*=\s*regexp\.MustCompile\(`([^`]*)`\)', src + open(os.path.join(PKG, 'shape.go')).read()))
states = sorted(re.findall(r'State\w+:\s*\d+', open(os.path.join(PKG, 'states.go')).read()))
stsrc = open(os.path.join(PKG, 'states.go')).read()
stconst = dict(re.findall(r'(State\w+)\s*=\s*"([^"]+)"', stsrc))
statenames = sorted(set(stconst.values()))
loadconst = dict(re.findall(r'(Load\w+)\s*=\s*"([^"]+)"', stsrc))
loadnames = list(dict.fromkeys(loadconst.values()))
MAXID = 2**53-1
OD = collections.OrderedDict
IPV4 = r'^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$'
IPV6 = r'^[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?::(?:[0-9]{1,3}\.){3}[0-9]{1,3})?$'
TIME = r'^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2})$'
DOTSEG = r'(?:^|[/ ])\.{1,2}(?:$|[/ ])'
TEXT = '^[^\u0000-\u0008\u000a-\u001f\u007f-\u009f\u2028\u2029]*$'
kinds = ["new","reload","reclaim","image","reserved"]
KS = {"new":["new","reinstall","tomaintenance"],"reload":["reload","reinstall","tomaintenance"],"reclaim":["timeout","deleted"],"image":["image","checkpoint"],"reserved":["reserved"]}

def defs():
    d = OD()
    d["id"] = {"type":"integer","minimum":1,"maximum":MAXID}
    d["id0"] = {"type":"integer","minimum":0,"maximum":MAXID}
    d["hostname"] = {"type":"string","maxLength":253,"pattern":pat["hostnameRe"]}
    d["label"] = {"type":"string","pattern":pat["labelRe"]}
    d["ip"] = {"type":"string","description":"a plain IPv4 or IPv6 address in canonical form (Go also rejects the unspecified and multicast addresses and non-canonical IPv6)","anyOf":[{"pattern":IPV4},{"pattern":IPV6}]}
    d["mac"] = {"type":"string","pattern":pat["macRe"]}
    d["state"] = {"type":"string","enum":statenames}
    d["time"] = {"type":"string","description":"RFC 3339 time","pattern":pat["timeRe"]}
    d["imageName"] = {"type":"string","pattern":pat["imageNameRe"],"not":{"pattern":r"\.\."}}
    d["path"] = {"type":"string","anyOf":[{"pattern":pat["absPathRe"]},{"pattern":pat["dsPathRe"]}],"not":{"pattern":DOTSEG}}
    d["switch"] = {"type":"string","pattern":pat["switchNameRe"]}
    d["username"] = {"type":"string","pattern":pat["usernameRe"]}
    d["kind"] = {"type":"string","enum":kinds}
    d["worker"] = {"type":"string","pattern":pat["workerRe"]}
    d["text"] = {"type":"string","minLength":1,"maxLength":4096,"pattern":TEXT,"description":"free text: no control character but tab, at most 4096 bytes (Go counts bytes, JSON Schema characters)"}
    return d

def obj(props, required):
    return OD([("type","object"),("additionalProperties",False),("required",required),("properties",OD(props))])

def ref(n): return {"$ref":"#/$defs/"+n}

def image():
    return obj([("id",ref("id")),("name",ref("imageName")),("revision_id",ref("id")),
        ("revision",{"type":"integer","minimum":0,"maximum":2**31-1}),
        ("os_type",{"type":"string","enum":["linux","windows"]}),
        ("os_name",{"type":"string","pattern":pat["osNameRe"]}),
        ("min_ram_mb",{"type":"integer","minimum":0,"maximum":16<<20}),
        ("min_cpus",{"type":"integer","minimum":0,"maximum":768})],
        ["id","name","revision_id","revision","os_type"])

def target():
    return obj([("image_id",ref("id")),("name",ref("imageName")),("revision_id",ref("id")),
        ("revision",{"type":"integer","minimum":0,"maximum":2**31-1})],["image_id","name","revision_id","revision"])

def request_schema(kind):
    d = defs()
    d["image"] = image()
    d["targetImage"] = target()
    d["user"] = obj([("id",ref("id")),("login",ref("username")),
        ("uid",{"type":"integer","description":"0 or absent: the guest picks one","anyOf":[{"const":0},{"minimum":1000,"maximum":2**31-2}]}),
        ("ssh_keys",{"type":"array","maxItems":32,"items":{"type":"string","maxLength":16384,"pattern":pat["sshKeyRe"]}}),
        ("root_access",{"type":"boolean"})],["id","login"])
    props = [
        ("schema",{"const":1}),
        ("kind",{"const":kind}),
        ("request",obj([("id",ref("id")),("state",{"type":"string","enum":KS[kind]}),("laststate",ref("state")),("start",ref("time")),("end",ref("time")),("modified",ref("time"))],["id","state","start","end"])),
        ("reservation",obj([("id",ref("id"))],["id"])),
        ("computer",obj([("id",ref("id")),("hostname",ref("hostname")),("short_name",ref("label")),("private_ip",ref("ip")),("public_ip",ref("ip")),
            ("eth0_mac",ref("mac")),("eth1_mac",ref("mac")),("ram_mb",{"type":"integer","minimum":1,"maximum":16<<20}),("cpus",{"type":"integer","minimum":1,"maximum":768})],
            ["id","hostname","short_name","private_ip","ram_mb","cpus"])),
        ("vmhost",obj([("id",ref("id")),("hostname",ref("hostname")),("profile",obj([
            ("datastore_path",ref("path")),("vm_path",ref("path")),("repository_path",ref("path")),
            ("virtual_switch0",ref("switch")),("virtual_switch1",ref("switch")),("virtual_switch2",ref("switch")),("virtual_switch3",ref("switch")),
            ("vmdisk",{"type":"string","enum":["shared","dedicated"]})],["datastore_path","virtual_switch0","vmdisk"]))],["id","hostname","profile"])),
        ("image",ref("image")),
        ("users",{"type":"array","maxItems":64,"items":ref("user")}),
        ("remote_ip",ref("ip")),
    ]
    required = ["schema","kind","request","reservation","computer","vmhost","image"]
    if kind == "image":
        props.append(("target_image",ref("targetImage")))
        required.append("target_image")
    if kind == "reserved":
        props[props.index(("users",{"type":"array","maxItems":64,"items":ref("user")}))] = ("users",{"type":"array","minItems":1,"maxItems":64,"items":ref("user")})
        required += ["users","remote_ip"]
    props += [("next_image",ref("image")),("management_node_ip",ref("ip"))]
    s = OD([("$schema","https://json-schema.org/draft/2020-12/schema"),
        ("$id","https://github.com/vclq/vclq/messages/schema/request-%s.schema.json"%kind),
        ("title","vclq request, kind %s (subject vcl.%s), schema 1"%(kind,kind)),
        ("description","See docs/messages.md. Cross-field rules checked only by the Go decoder: short_name is the hostname's first label, request.end is after request.start (except for reclaim), logins/uids/user ids are unique and not reserved system accounts, an image's target name differs from the captured image, SSH key data parses and matches its type, IPs are canonical host addresses.")])
    s.update(obj(props,required))
    s["$defs"] = d
    return s

def loadlog_schema():
    d = defs()
    s = OD([("$schema","https://json-schema.org/draft/2020-12/schema"),
        ("$id","https://github.com/vclq/vclq/messages/schema/loadlog.schema.json"),
        ("title","vclq loadlog event (subject vcl.events.loadlog.<reservation>), schema 1")])
    s.update(obj([("schema",{"const":1}),("reservation_id",ref("id")),("request_id",ref("id0")),("computer_id",ref("id0")),
        ("kind",ref("kind")),("name",{"type":"string","enum":loadnames}),("phase",{"type":"string","enum":["begin","end","fail","info"]}),
        ("step",{"type":"integer","minimum":0,"maximum":1000}),("info",ref("text")),("duration_ms",{"type":"integer","minimum":0,"maximum":MAXID}),
        ("time",ref("time")),("worker",ref("worker")),("request_seq",{"type":"integer","minimum":0,"maximum":MAXID})],
        ["schema","reservation_id","request_id","computer_id","kind","name","phase","step","time","worker","request_seq"]))
    s["$defs"] = d
    return s

def result_schema():
    d = defs()
    d["targetImage"] = target()
    s = OD([("$schema","https://json-schema.org/draft/2020-12/schema"),
        ("$id","https://github.com/vclq/vclq/messages/schema/result.schema.json"),
        ("title","vclq result event (subject vcl.events.result.<reservation>), schema 1")])
    s.update(obj([("schema",{"const":1}),("reservation_id",ref("id0")),("request_id",ref("id0")),("computer_id",ref("id0")),
        ("kind",{"type":"string","enum":kinds+[""]}),("outcome",{"type":"string","enum":["success","failed","rejected"]}),
        ("request_state",{"type":"string","enum":statenames+[""]}),("computer_state",{"type":"string","enum":statenames+[""]}),
        ("error_code",{"type":"string","pattern":pat["errorCodeRe"]}),("error",ref("text")),
        ("ip",ref("ip")),("image_id",ref("id0")),("image_revision_id",ref("id0")),("image_size_mb",ref("id0")),
        ("new_image",ref("targetImage")),
        ("passwords",{"type":"array","maxItems":64,"items":obj([("user_id",ref("id")),("login",ref("username")),
            ("sealed",{"type":"string","minLength":4,"maxLength":1024,"pattern":pat["sealedRe"]})],["user_id","login","sealed"])}),
        ("worker",ref("worker")),("time",ref("time")),("deliveries",{"type":"integer","minimum":0,"maximum":1<<20}),
        ("request_seq",{"type":"integer","minimum":0,"maximum":MAXID})],
        ["schema","reservation_id","request_id","computer_id","kind","outcome","request_state","computer_state","worker","time","deliveries","request_seq"]))
    s["allOf"] = [
        {"if":{"properties":{"outcome":{"const":"rejected"}}},
         "else":{"properties":{"reservation_id":ref("id"),"kind":ref("kind"),"request_state":{"enum":statenames},"computer_state":{"enum":statenames+[""]}}}},
        {"if":{"properties":{"outcome":{"const":"success"}}},"then":{"properties":{"computer_state":{"enum":statenames}}}},
        {"if":{"properties":{"outcome":{"enum":["failed","rejected"]}}},"then":{"required":["error"]}},
    ]
    s["$defs"] = d
    return s

def w(name, s):
    open(os.path.join(PKG, 'schema/%s.schema.json'%name),'w').write(json.dumps(s,indent=2,ensure_ascii=True)+"\n")
for k in kinds: w("request-"+k, request_schema(k))
w("loadlog", loadlog_schema()); w("result", result_schema())
