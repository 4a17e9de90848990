# Cases for firmware/ed25519.py, under CPython and MicroPython (tests/mp/run.py): the
# RFC 8032 section 7.1 Ed25519 vectors (TEST 1, 2, 3, 1024 and SHA(abc); public key,
# message, signature in hex), a flipped bit anywhere refused, and the pure SHA-512
# against known digests (MicroPython's hashlib has none, so it is what a board runs).

from firmware import ed25519 as E

# (public key, message, signature)
VECTORS = {
    "TEST_1": (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        (
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac"
            "c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        ),
    ),
    "TEST_2": (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        (
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e"
            "458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
        ),
    ),
    "TEST_3": (
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        (
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290"
            "ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"
        ),
    ),
    "TEST_1024": (
        "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        (
            "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12"
            "ee50f8f54e9f77b1e355f6c50544e23fb1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe57"
            "38829adb26c81b37c93a1b270b20329d658675fc6ea534e0810a4432826bf58c941efb65d57a338b"
            "bd2e26640f89ffbc1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4fe"
            "ba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e06203b33890cc9b8"
            "32f79ef80560ccb9a39ce767967ed628c6ad573cb116dbefefd75499da96bd68a8a97b928a8bbc10"
            "3b6621fcde2beca1231d206be6cd9ec7aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53"
            "f1d8ac70bdcb7ed185ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2"
            "d17ba70eb6248e594e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24554119a831a9aad6"
            "079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f27088d78b7e883c8759d2c4f5c65adb7553"
            "878ad575f9fad878e80a0c9ba63bcbcc2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2"
            "cf65bd92dd597b0707e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
            "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51addd3b75a2b1ae078"
            "4504df543af8969be3ea7082ff7fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8"
            "fcffead94f3c7ca495e056a9b47acdb751fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301"
            "651339e22904cc8c42f58c30c04aafdb038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8"
            "ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34dff7310fdc82aebfd9"
            "04b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08d78ff4ef5d63653a65040cf9bfd4aca7"
            "984a74d37145986780fc0b16ac451649de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a"
            "3ca8e1b939ae49e488acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a3"
            "2ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e6aed3fb0f9cd71a4"
            "3dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5fb93246f6b1116398a346f1a641f3b041"
            "e989f7914f90cc2c7fff357876e506b50d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d9"
            "0d11faa933a15ef1369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
            "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c0618983f8741c5ef"
            "68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0"
        ),
        (
            "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350aa5371b1508f9f45"
            "28ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03"
        ),
    ),
    "SHA(abc)": (
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        # the message is SHA-512("abc")
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
}

# SHA-512 digests (FIPS 180-4 examples and a two-block message)
SHA512 = (
    (
        b"abc",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
    ),
    (
        b"",
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
        "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
    ),
    (
        b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn"
        b"hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
        "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018"
        "501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909",
    ),
)


def _vector(name):
    """(public key, signature, message): the order verify takes them."""
    pub, msg, sig = VECTORS[name]
    return bytes.fromhex(pub), bytes.fromhex(sig), bytes.fromhex(msg)


def _flip(data, bit):
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_rfc8032_test_1():
    assert E.verify(*_vector("TEST_1"))


def test_rfc8032_test_2():
    assert E.verify(*_vector("TEST_2"))


def test_rfc8032_test_3():
    assert E.verify(*_vector("TEST_3"))


def test_rfc8032_test_1024():
    pub, sig, msg = _vector("TEST_1024")
    assert len(msg) == 1023
    assert E.verify(pub, sig, msg)


def test_rfc8032_sha_abc():
    pub, sig, msg = _vector("SHA(abc)")
    assert msg == E.Sha512(b"abc").digest()
    assert E.verify(pub, sig, msg)


def test_message_fed_in_pieces():
    pub, sig, msg = _vector("TEST_1024")

    def feed(hasher):
        for i in range(0, len(msg), 100):
            hasher.update(msg[i : i + 100])

    assert E.verify(pub, sig, feed)


def test_a_flipped_bit_is_refused():
    pub, sig, msg = _vector("TEST_3")
    for bit in (0, 7, 255, 256, 300, 511):  # in R and in S
        assert not E.verify(pub, _flip(sig, bit), msg), bit
    for bit in (0, 15):
        assert not E.verify(pub, sig, _flip(msg, bit)), bit
    for bit in (0, 100, 254):
        assert not E.verify(_flip(pub, bit), sig, msg), bit


def test_another_key_or_message_is_refused():
    pub1, sig1, msg1 = _vector("TEST_1")
    pub2, _sig2, msg2 = _vector("TEST_2")
    assert not E.verify(pub2, sig1, msg1)
    assert not E.verify(pub1, sig1, msg2)


def test_malformed_inputs_are_refused():
    pub, sig, msg = _vector("TEST_2")
    assert not E.verify(pub[:31], sig, msg)
    assert not E.verify(pub, sig[:63], msg)
    # S not below the group order L: refused (no malleability)
    s = int.from_bytes(sig[32:], "little") + E._L
    assert not E.verify(pub, sig[:32] + s.to_bytes(32, "little"), msg)
    # y of the key not below p
    assert not E.verify(b"\xff" * 31 + b"\x7f", sig, msg)


def test_pure_sha512_known_digests():
    for data, digest in SHA512:
        assert E.Sha512(data).digest().hex() == digest, data


def test_pure_sha512_in_pieces_and_block_edges():
    for n in (111, 112, 127, 128, 129, 255, 256):
        data = bytes(i % 251 for i in range(n))
        whole = E.Sha512(data).digest()
        h = E.Sha512()
        for i in range(0, n, 37):
            h.update(data[i : i + 37])
        assert h.digest() == whole, n
        assert E.sha512(data).digest() == whole, n  # the port's own, when it has one


def test_tick_is_called_during_a_verify():
    ticks = []
    assert E.verify(*_vector("TEST_2"), tick=lambda: ticks.append(1))
    assert len(ticks) == 16  # every 16 of the 256 bits
